"""Memory per tracked object: the figures behind maskml.predict.objects.OBJECT_MEMORY.

    python benchmarks/bench_object_memory.py                               # cutie_small, cutie_base, sam2.1_hiera_t
    python benchmarks/bench_object_memory.py --models cutie_small --size 427x240

Each (model, objects) runs in its own process with 2 threads: the tracker (VideoTracker or Sam2Tracker,
default options) gets N objects as discs on the first frame of examples/judo (854x480, or resized to
--size), then tracks --frames frames (the clip repeated), long enough for the memories to fill (Cutie's
working memory after mem_every x max_mem_frames = 25 frames, SAM 2's keep_window of 16 frames). Peak
resident memory of 1 and of N objects gives the cost of one more object: (peak(N) - peak(1)) / (N - 1).
Weights are random (memory does not depend on their values).
"""
from __future__ import annotations

import argparse
import json
import sys

from _common import ROOT, machine_line, peak_rss_mb, run_worker

FRAMES = ROOT / "examples" / "judo"


def worker(name: str, objects: int, frames_to_run: int, size: tuple[int, int]) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import maskml

    width, height = size
    frames = [np.array(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR))
              for p in sorted(FRAMES.glob("*.jpg"))]
    mask = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for i in range(objects):  # discs side by side, as in bench_cutie.py
        cx, cy = width * (i + 1) / (objects + 1), height / 2
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2] = i + 1
    torch.manual_seed(0)
    model = maskml.build_model(name)
    family = maskml.zoo.get_entry(name).family
    tracker = maskml.VideoTracker(model) if family == "cutie" else maskml.Sam2Tracker(model)
    with torch.inference_mode():
        for i in range(frames_to_run):
            out = tracker.step(frames[i % len(frames)], mask if i == 0 else None)
    assert len(out.object_ids) == objects
    return {"model": name, "objects": objects, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cutie_small", "cutie_base", "sam2.1_hiera_t"])
    parser.add_argument("--objects", type=int, default=4, help="the larger object count (the smaller is 1)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", default="854x480", help="frame size WxH (default: the clip's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.frames, size)))
        return

    print(f"{machine_line(args.threads)}; {args.size} frames, {args.frames} frames tracked")
    print(f"| model | peak RSS, 1 object (MB) | peak RSS, {args.objects} objects (MB) | per object (MB) |")
    print("|---|---|---|---|")
    for name in args.models:
        peaks = []
        for objects in (1, args.objects):
            cmd = [sys.executable, __file__, "--worker", name, str(objects), "--frames", str(args.frames),
                   "--size", args.size, "--threads", str(args.threads)]
            peaks.append(run_worker(cmd, f"{name}/{objects}")["peak_rss_mb"])
        per_object = (peaks[1] - peaks[0]) / (args.objects - 1)
        print(f"| {name} | {peaks[0]:.0f} | {peaks[1]:.0f} | {per_object:.1f} |", flush=True)


if __name__ == "__main__":
    main()
