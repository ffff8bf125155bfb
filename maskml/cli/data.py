"""`maskml data synth OUT_DIR --images N --videos M --seed S`: synthetic training data with exact masks."""
from __future__ import annotations

import time
from pathlib import Path

AUTO_PHOTOS = ("examples", "../shared/data/images")  # used for cut-outs and backgrounds when they exist


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="make training data (synthetic scenes with exact masks)",
                              description="Data for training and evaluation.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = sub.add_parser("synth", help="generate synthetic images (SA-1B layout) and videos (DAVIS layout)",
                       description="Scenes of random shapes with random textures (and cut-outs of real photos) over "
                                   "textured or photographic backgrounds, with occlusions, scale changes and, in "
                                   "videos, motion and objects entering and leaving. Writes OUT_DIR/images (SA-1B: "
                                   "jpg + json with RLE masks) and OUT_DIR/videos (DAVIS: JPEGImages/, "
                                   "Annotations/). The same arguments give the same files; rerunning with them "
                                   "completes an interrupted run.")
    s.add_argument("out_dir", type=Path, help="output folder (new or empty, or one this command made)")
    s.add_argument("--images", type=int, default=0, help="number of images")
    s.add_argument("--videos", type=int, default=0, help="number of videos")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of images and frames (default 320x240)")
    s.add_argument("--frames", type=int, default=24, help="frames per video")
    s.add_argument("--objects", default="2-6", help="objects per scene, MIN-MAX (default 2-6)")
    s.add_argument("--photos", nargs="*", default=None,
                   help="image files or folders to cut objects and backgrounds from (default: examples/ and "
                        "../shared/data/images when present; give --photos with nothing for none)")
    s.set_defaults(func=run)


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    from maskml.errors import MaskmlError

    try:
        a, b = (int(v) for v in text.split(sep))
    except ValueError:
        raise MaskmlError(f"{what} must look like 320{sep}240, got {text!r}") from None
    return a, b


def run(args) -> None:
    import torch

    from maskml.train.data.synth import SynthConfig, generate

    # the drawing is many small tensor operations: extra threads only wait on each other (measured 8x slower
    # with 2 threads than with 1 on a busy 2-core machine)
    torch.set_num_threads(1)
    width, height = _pair(args.size, "x", "--size")
    low, high = _pair(args.objects, "-", "--objects")
    photos = args.photos if args.photos is not None else [p for p in AUTO_PHOTOS if Path(p).is_dir()]
    cfg = SynthConfig(images=args.images, videos=args.videos, seed=args.seed, width=width, height=height,
                      frames=args.frames, min_objects=low, max_objects=high, photos=[str(p) for p in photos])
    start = time.perf_counter()
    written = generate(args.out_dir, cfg)
    seconds = time.perf_counter() - start
    print(f"wrote {written['images']} images and {written['videos']} videos to {args.out_dir} in {seconds:.1f} s"
          + (f" (photos from {', '.join(photos)})" if photos else ""))
