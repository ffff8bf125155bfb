"""`maskml bench`: PyTorch against ONNX Runtime (float32, int8) in one table, in one process."""
from __future__ import annotations

import argparse
from pathlib import Path

from maskml.errors import MaskmlError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the sample images of a source checkout

EPILOG = """examples:
  maskml bench                                              (mobile_sam, official weights from the cache)
  maskml bench --models mobile_sam,cutie_small --runs 5 --threads 2
  maskml bench --models mobile_sam --checkpoint mobile_sam=mobile_sam.pt --images photos/ --json bench.json
  maskml bench --calibration photos/                        (adds an ORT int8-static row)
  maskml bench --threads 1 --clock cpu                      (CPU time: on a machine shared with other jobs)

Per model: encoder ms, decoder ms per prompt, video frame ms with 1 and 3 objects (trackers), peak resident
memory, mask IoU against PyTorch float32 on three clicks per image. The ONNX graphs are exported into a
temporary folder, removed at the end. With --device cuda, bf16 and torch.compile rows are added.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time PyTorch and ONNX Runtime (float32, int8) in one table",
                              description="Benchmark each model on PyTorch and on ONNX Runtime (float32, int8) and "
                                          "print one markdown table.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobile_sam", metavar="NAME[,NAME]",
                   help="models to time (default mobile_sam): image models, cutie_*, sam2*")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]PATH",
                   help="a model's checkpoint file (repeatable; NAME= may be left out with one model); "
                        "default: the official file from the cache")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="images or folders of images for the times (the first) and the IoU column (all); "
                        "default: the checkout's examples/")
    p.add_argument("--runs", type=int, default=3, help="timed calls per figure, after one warm-up (default 3)")
    p.add_argument("--video-frames", type=int, default=4, metavar="N",
                   help="tracked frames of the synthetic 854x480 clip per video figure (default 4)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime (default: torch's)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (default); cpu: this process's CPU time, with --threads 1: the figures "
                        "of a machine shared with other jobs")
    p.add_argument("--device", default="cpu", help="cpu or cuda for the PyTorch rows (default cpu)")
    p.add_argument("--calibration", metavar="DIR", help="also an ORT int8-static row, calibrated on these images")
    p.add_argument("--profile", action="store_true",
                   help="also the share of each ONNX Runtime graph's time by operator type (onnxruntime's profiler)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def parse_checkpoints(values: list[str], models: list[str]) -> dict[str, str]:
    checkpoints = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not (sep and name in models):
            if len(models) != 1:
                raise MaskmlError(f"--checkpoint {value}: give NAME=PATH with NAME one of --models "
                                  f"({', '.join(models)})")
            name, path = models[0], value
        checkpoints[name] = path
    return checkpoints


def run(args) -> None:
    import json

    import torch

    from maskml.bench import markdown, read_bench_images, run_bench
    from maskml.io.images import atomic_path
    from maskml.io.outputs import check_outputs

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise MaskmlError("--models is empty: give model names, e.g. --models mobile_sam,cutie_small")
    checkpoints = parse_checkpoints(args.checkpoint, models)
    if args.runs < 1 or args.video_frames < 1:
        raise MaskmlError("--runs and --video-frames take a positive number")
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise MaskmlError(f"--device {args.device}: choose cpu, or cuda on a machine with a CUDA GPU")
    image_paths = args.images or [EXAMPLES]
    if not args.images and not EXAMPLES.is_dir():
        raise MaskmlError("no sample images here: give --images PATH (image files or folders)")
    check_outputs({**{f"--checkpoint {name}": path for name, path in checkpoints.items()},
                   **{f"--images {path}": path for path in image_paths}, "--calibration": args.calibration},
                  files={"--json": args.json})
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_bench(models, checkpoints, read_bench_images(image_paths), args.runs, args.device,
                       args.calibration, args.video_frames, args.profile, args.clock)
    print(markdown(result))
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(result.as_dict(), indent=2))
