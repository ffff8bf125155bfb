"""What the overlay video of `maskml track --overlay` costs to encode, per codec this OpenCV can write.

    python benchmarks/bench_overlay.py                  # 48 frames at 854x480
    python benchmarks/bench_overlay.py --frames 96 --size 1280x720

Frames are examples/judo with a mask drawn on them, as the overlay is. For each codec that opens,
prints frames encoded per second and bytes per frame; browser-playable ones are marked. The tracking
itself runs at the model's speed (bench_pipeline.py): compare the two to see what --overlay adds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the maskml of this checkout


def main() -> None:
    import numpy as np
    from PIL import Image

    from maskml.io.draw import draw_masks
    from maskml.io.video import BROWSER_PLAYABLE, CODEC_NAMES, VideoWriter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="854x480", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    judo = [np.array(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR))
            for p in sorted((ROOT / "examples" / "judo").glob("*.jpg"))]
    labels = np.zeros((height, width), np.uint8)
    labels[height // 4:3 * height // 4, width // 3:2 * width // 3] = 1
    pictures = [draw_masks(frame, labels) for frame in judo]
    print(f"{args.frames} frames at {width}x{height}")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, fourcc in ((".mp4", "avc1"), (".mp4", "vp09"), (".mp4", "mp4v"), (".webm", "VP90"),
                               (".webm", "VP80")):
            path = Path(tmp) / f"overlay{suffix}"
            try:
                writer = VideoWriter(path, fps=25, size=(width, height), codecs=(fourcc,))
            except Exception:
                print(f"{suffix:5} {CODEC_NAMES[fourcc]:22} no encoder in this OpenCV")
                continue
            start = time.perf_counter()
            with writer:
                for i in range(args.frames):
                    writer.write(pictures[i % len(pictures)])
            seconds = time.perf_counter() - start
            playable = "browsers play it" if fourcc in BROWSER_PLAYABLE else "browsers do not play it"
            print(f"{suffix:5} {CODEC_NAMES[fourcc]:22} {args.frames / seconds:7.1f} frames/s "
                  f"{path.stat().st_size / args.frames / 1000:7.1f} kB/frame  {playable}")


if __name__ == "__main__":
    main()
