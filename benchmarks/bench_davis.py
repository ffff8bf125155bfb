"""Speed of `maskml eval davis` on a synthetic set the size of DAVIS 2017 val.

    python benchmarks/bench_davis.py                  # 30 sequences, 1,980 frames at 854x480, 60 objects
    python benchmarks/bench_davis.py --repeat 5

Each sequence has two objects (ellipses moving across the frame); the predictions are the ground
truth shifted by a few pixels, dilated on some frames and missing an object on others, so that
J and F take all kinds of values. The set is written once into a temporary folder (indexed PNGs,
as DAVIS ships them) and scored --repeat times; the table gives the fastest and the median run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskml.eval.davis import evaluate_davis  # noqa: E402
from maskml.io.masks import save_mask  # noqa: E402


def write_set(root: Path, sequences: int, frames: int, size: tuple[int, int]) -> None:
    h, w = size
    rng = np.random.default_rng(0)
    for s in range(sequences):
        start, speed = rng.uniform(0.1, 0.9, (2, 2)), rng.uniform(-4, 4, (2, 2))
        for kind in ("gt", "pred"):
            (root / kind / f"seq{s:02d}").mkdir(parents=True)
        for t in range(frames):
            gt = np.zeros((h, w), np.uint8)
            for obj in range(2):
                x, y = (start[obj] * (w, h) + speed[obj] * t).astype(int)
                cv2.ellipse(gt, (int(x) % w, int(y) % h), (40 + 30 * obj, 25 + 20 * obj), 15 * t, 0, 360, obj + 1, -1)
            pred = np.roll(gt, (t % 5) - 2, axis=1)
            if t % 3 == 0:
                pred = cv2.dilate(pred, np.ones((5, 5), np.uint8))
            if t % 7 == 0:
                pred[pred == 2] = 0
            save_mask(root / "gt" / f"seq{s:02d}" / f"{t:05d}.png", gt)
            save_mask(root / "pred" / f"seq{s:02d}" / f"{t:05d}.png", pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=30)
    parser.add_argument("--frames", type=int, default=66, help="frames per sequence")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_set(root, args.sequences, args.frames, (480, 854))
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = evaluate_davis(root / "pred", root / "gt")
            times.append(time.perf_counter() - start)
    print("| sequences | frames | objects | J&F-Mean | fastest (s) | median (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.sequences} | {args.sequences * args.frames} | {len(results.objects)} | "
          f"{results.global_scores()['J&F-Mean']:.3f} | {min(times):.2f} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
