"""Memory per tracked object: the figures behind maskml.predict.objects.OBJECT_MEMORY.

    python benchmarks/bench_object_memory.py                               # cutie_small, cutie_base, sam2.1_hiera_t
    python benchmarks/bench_object_memory.py --models cutie_small --size 427x240

Each (model, objects) runs in its own process with 2 threads: the tracker (VideoTracker or Sam2Tracker,
default options) gets N objects as discs on the first frame of examples/judo (854x480, or resized to
--size), then tracks --frames frames (the clip repeated), long enough for the memories to fill (Cutie's
working memory after mem_every x max_mem_frames = 25 frames, SAM 2's keep_window of 16 frames). Peak
resident memory of 1 and of N objects gives the cost of one more object: (peak(N) - peak(1)) / (N - 1);
so does the tracker's state at the end (the bytes of the tensors it holds: memories, sensory, outputs kept).
The peak includes what one frame computes per object at once (Cutie runs its mask encoder and decoder on all
objects together); SAM 2 works on one object after another, so there the state is what grows with objects.
Weights are random (memory does not depend on their values).
"""
from __future__ import annotations

import argparse
import json
import sys

from _common import ROOT, machine_line, peak_rss_mb, run_worker

FRAMES = ROOT / "examples" / "judo"


def state_bytes(root) -> int:
    """Bytes of the distinct tensors an object holds, following attributes, containers and dataclasses
    (the model's weights excluded: they are the same for any object count)."""
    import torch

    seen, total, stack = set(), 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, torch.nn.Module):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if ("storage", storage.data_ptr()) not in seen:
                seen.add(("storage", storage.data_ptr()))
                total += storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("maskml"):
            stack.extend(vars(obj).values())
    return total


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
    return {"model": name, "objects": objects, "peak_rss_mb": peak_rss_mb(), "state_mb": state_bytes(tracker) / 2**20}


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
    print(f"| model | peak RSS, 1 / {args.objects} objects (MB) | peak RSS per object (MB) | tracker state, 1 / "
          f"{args.objects} objects (MB) | state per object (MB) |")
    print("|---|---|---|---|---|")
    for name in args.models:
        rows = []
        for objects in (1, args.objects):
            cmd = [sys.executable, __file__, "--worker", name, str(objects), "--frames", str(args.frames),
                   "--size", args.size, "--threads", str(args.threads)]
            rows.append(run_worker(cmd, f"{name}/{objects}"))
        per_object = {key: (rows[1][key] - rows[0][key]) / (args.objects - 1) for key in ("peak_rss_mb", "state_mb")}
        print(f"| {name} | {rows[0]['peak_rss_mb']:.0f} / {rows[1]['peak_rss_mb']:.0f} "
              f"| {per_object['peak_rss_mb']:.1f} "
              f"| {rows[0]['state_mb']:.1f} / {rows[1]['state_mb']:.1f} | {per_object['state_mb']:.2f} |", flush=True)

if __name__ == "__main__":
    main()
