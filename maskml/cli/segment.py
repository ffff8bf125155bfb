"""`maskml segment`: masks for one image from clicks and boxes, or everything in it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from maskml.cli.backend import add_backend_arguments, backend_options
from maskml.errors import MaskmlError
from maskml.io.images import atomic_paths, image_format, read_image, save_image
from maskml.io.outputs import check_outputs

EPILOG = """examples:
  maskml segment truck.jpg --model mobile_sam --point 500,375 --out mask.png --overlay overlay.jpg
  maskml segment truck.jpg --model sam_vit_b --box 75,275,1725,850 --point 575,750,0 --out mask.png
  maskml segment truck.jpg --model mobile_sam --everything --out masks.json --overlay all.jpg
"""


def parse_numbers(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = None
    if values is None or len(values) not in counts or not all(np.isfinite(values)):
        forms = {"--point": "X,Y or X,Y,LABEL", "--box": "X0,Y0,X1,Y1"}[option]
        raise MaskmlError(f"{option} {text!r} is not of the form {forms} (numbers in image pixels)")
    return values


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment objects in an image from points/boxes, or everything",
                              description="Segment objects in one image. Coordinates are pixels of the image "
                                          "(x right, y down).",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="input image (jpg, png, ...)")
    p.add_argument("--model", default="mobile_sam", help="model name (default: mobile_sam); see `maskml.list_models()`")
    p.add_argument("--checkpoint", help="checkpoint file (default: the official file from the cache, downloaded once)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a click; LABEL 1 = object (default), 0 = background. Repeatable")
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    p.add_argument("--multimask", action="store_true", help="predict 3 masks and keep the best-scoring one")
    p.add_argument("--everything", action="store_true", help="segment everything (automatic masks) into a JSON file")
    p.add_argument("--points-per-side", type=int, default=32, help="with --everything: point grid size (default 32)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88,
                   help="with --everything: keep masks whose predicted IoU is above this (default 0.88)")
    p.add_argument("--stability-score-thresh", type=float, default=0.95,
                   help="with --everything: keep masks at least this stable (default 0.95)")
    p.add_argument("--out", required=True, help="MASK.png (0/255), or OUT.json with --everything")
    p.add_argument("--logits", help="also write the mask logits, float32 .npy of shape (C, H, W)")
    p.add_argument("--overlay", help="also write the image with the mask(s) drawn on it (.jpg/.png)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    add_backend_arguments(p)
    p.set_defaults(func=run)


def check_arguments(args, height: int, width: int):
    """Everything the user typed, validated before the (slow) model load."""
    points, labels = [], []
    for text in args.point:
        values = parse_numbers(text, "--point", (2, 3))
        x, y = values[:2]
        label = values[2] if len(values) == 3 else 1
        if label not in (0, 1):
            raise MaskmlError(f"--point {text!r}: LABEL must be 1 (object) or 0 (background)")
        if not (0 <= x <= width and 0 <= y <= height):
            raise MaskmlError(f"--point {text!r} is outside the {width}x{height} image")
        points.append((x, y))
        labels.append(int(label))
    box = None
    if args.box is not None:
        box = parse_numbers(args.box, "--box", (4,))
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise MaskmlError(f"--box {args.box!r}: need X0 < X1 and Y0 < Y1")
        if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
            raise MaskmlError(f"--box {args.box!r} is outside the {width}x{height} image")
    if args.everything:
        if args.points_per_side < 1:
            raise MaskmlError(f"--points-per-side must be a positive number, got {args.points_per_side}")
        if points or box is not None:
            raise MaskmlError("--everything segments the whole image: drop --point/--box")
        if Path(args.out).suffix.lower() != ".json":
            raise MaskmlError(f"--out {args.out}: with --everything the output is a .json file")
        if args.logits:
            raise MaskmlError("--logits is not available with --everything")
    else:
        if not points and box is None:
            raise MaskmlError("no prompt: give at least one --point X,Y or a --box X0,Y0,X1,Y1 (or --everything)")
        if Path(args.out).suffix.lower() != ".png":
            raise MaskmlError(f"--out {args.out}: the mask is written as a .png file")
    if args.logits and Path(args.logits).suffix.lower() != ".npy":
        raise MaskmlError(f"--logits {args.logits}: the logits are written as a .npy file")
    if args.overlay:
        image_format(args.overlay)
    return points, labels, box


def run(args) -> None:
    import maskml
    from maskml.io.draw import draw_masks, draw_prompts

    image = read_image(args.image)  # first: a wrong input is the message to give, not what it implies for outputs
    check_outputs({"IMAGE": args.image, "--checkpoint": args.checkpoint},
                  files={"--out": args.out, "--logits": args.logits, "--overlay": args.overlay})
    height, width = image.shape[:2]
    points, labels, box = check_arguments(args, height, width)
    model = maskml.load_model(args.model, checkpoint=args.checkpoint, device=args.device, **backend_options(args))

    if args.everything:
        records = maskml.AutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh, output_mode="coco_rle", progress=True).generate(image)
        outputs = [args.out] + ([args.overlay] if args.overlay else [])
        with atomic_paths(*outputs) as temps:
            temps[0].write_text(json.dumps(records))
            if args.overlay:
                from maskml.io.rle import decode_rle

                ids = np.zeros((height, width), np.int64)
                for i, record in enumerate(sorted(records, key=lambda r: -r["area"])):  # small masks on top
                    ids[decode_rle(record["segmentation"]).numpy()] = i + 1
                save_image(temps[1], draw_masks(image, ids), image_format(args.overlay))
        print(f"{len(records)} masks -> {', '.join(map(str, outputs))}")
        return

    predictor = maskml.ImagePredictor(model)
    predictor.set_image(image)
    out = predictor.predict(points=points or None, labels=labels or None, box=box, multimask=args.multimask)
    best = out.best()
    mask = out.masks[best].cpu().numpy()
    outputs = [args.out] + [p for p in (args.logits, args.overlay) if p]
    with atomic_paths(*outputs) as temps:
        save_image(temps[0], mask.astype(np.uint8) * 255, "PNG")
        rest = iter(temps[1:])
        if args.logits:
            with open(next(rest), "wb") as f:
                np.save(f, out.logits.float().cpu().numpy())
        if args.overlay:
            picture = draw_prompts(draw_masks(image, mask.astype(np.int64)), points, labels, box)
            save_image(next(rest), picture, image_format(args.overlay))
    score = float(out.scores[best])
    print(f"mask {best if args.multimask else 0} (predicted IoU {score:.3f}, {int(mask.sum())} pixels) -> {', '.join(map(str, outputs))}")
