"""Click, then track, end to end: MobileSAM turns clicks into masks, Cutie-small tracks them.

    python benchmarks/bench_pipeline.py                       # frames/s with 1 and 3 objects, click latency
    python benchmarks/bench_pipeline.py --stream 10000        # memory over a 10,000-frame generated video
    python benchmarks/bench_pipeline.py --objects --stream 10000 --stream-size 320x180  # only that, smaller frames

Frames are 854x480: examples/judo repeated, written to an MP4 and read back, so a run goes through the
whole path of `maskml track --prompter`: decode, prompter, tracker, output PNGs. Objects are clicks on
the first frame. Models get the tests' deterministic parity weights (speed does not depend on the
values; their masks are not empty, as random weights' may be), or the official files with --official.
Each configuration runs in its own process.

click -> first mask: the prompter's image embedding, the mask decoder for every object, and the
tracker's first step; re-click: one more click on a frame already embedded (the demo's preview).
end-to-end frames/s: 1 / median time per tracked frame after the first (read, track, write).
--stream: resident memory and malloc's bytes in use every tenth of the run.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))  # the maskml of this checkout


def memory_mb() -> tuple[float, float]:
    """(resident, malloc in use) in MB."""
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return rss, (info.uordblks + info.hblkhd) / 2**20


def load_models(official: bool, folder: Path):
    import maskml

    if official:
        return maskml.load_model("mobile_sam"), maskml.load_model("cutie_small")
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_parity_checkpoint

    sam = write_parity_checkpoint(FIXTURES / "sam" / "manifest_vit_t.json", folder / "mobile_sam.pt")
    cutie = write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json", folder / "cutie-small-mega.pth")
    return maskml.load_model("mobile_sam", checkpoint=sam), maskml.load_model("cutie_small", checkpoint=cutie)


def write_video(path: Path, frames: int, size: tuple[int, int] = (854, 480)) -> None:
    """size: (width, height)."""
    import numpy as np
    from PIL import Image

    from maskml.io.video import VideoWriter

    judo = [np.array(Image.open(p).convert("RGB").resize(size, Image.BILINEAR))
            for p in sorted((ROOT / "examples" / "judo").glob("*.jpg"))]
    # forwards then backwards, so the motion has no jump where the clip repeats
    cycle = judo + judo[-2:0:-1]
    with VideoWriter(path, fps=25, size=size, codecs=("mp4v",)) as writer:  # an input: fast to encode is what counts
        for i in range(frames):
            writer.write(cycle[i % len(cycle)])


def worker(objects: int, frames: int, official: bool, stream: bool, size: tuple[int, int] = (854, 480)) -> dict:
    import maskml
    from maskml.io.results import ResultWriter
    from maskml.io.video import open_video

    scale_x, scale_y = size[0] / 854, size[1] / 480
    clicks = [(x * scale_x, y * scale_y) for x, y in [(427, 260), (300, 220), (560, 240)][:objects]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompter, cutie = load_models(official, tmp)
        write_video(tmp / "video.mp4", frames, size)
        source = open_video(tmp / "video.mp4")
        pipe = maskml.Pipeline(maskml.VideoTracker(cutie), prompter)
        prompts = [maskml.Prompt(i + 1, points=[xy]) for i, xy in enumerate(clicks)]
        result = {"objects": objects, "frames": frames}
        step_times, memory = [], []
        with ResultWriter(tmp / "out", object_ids=range(1, objects + 1), size=source.size, fps=source.fps) as out:
            start = time.perf_counter()
            for index, name, frame in source:
                if index == 0:
                    t0 = time.perf_counter()
                    output = pipe.step(frame, prompts)  # from nothing, as a user's first click costs
                    t1 = time.perf_counter()
                    pipe.segment(frame, prompts)  # the frame is embedded already: the decoder only
                    t2 = time.perf_counter()
                    pipe.segment(frame, prompts[:1])
                    t3 = time.perf_counter()
                    pipe.predictor.set_image(frame)  # the embedding alone
                    t4 = time.perf_counter()
                    result.update(click_ms=1000 * (t1 - t0), decode_ms=1000 * (t2 - t1) / objects,
                                  reclick_ms=1000 * (t3 - t2), embed_ms=1000 * (t4 - t3))
                else:
                    output = pipe.step(frame)
                out.write(index, name, frame, output)
                now = time.perf_counter()
                if index:
                    step_times.append(now - start)
                start = now
                if stream and (index + 1) % max(frames // 10, 1) == 0:
                    memory.append([round(v) for v in memory_mb()])
        result["fps"] = 1 / statistics.median(step_times) if step_times else float("nan")
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["memory"] = memory
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="*", type=int, default=[1, 3], choices=[1, 2, 3],
                        help="object counts of the timing runs (none: only --stream)")
    parser.add_argument("--frames", type=int, default=12, help="frames per timing run (default 12)")
    parser.add_argument("--stream", type=int, default=0, help="also track one object through this many frames, "
                                                              "reporting memory every tenth of them")
    parser.add_argument("--stream-size", default="854x480", metavar="WxH", help="frame size of the --stream video")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official", action="store_true", help="the official checkpoints (from the cache)")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        objects, frames, stream = args.worker
        size = tuple(int(v) for v in args.stream_size.split("x")) if stream else (854, 480)
        print(json.dumps(worker(objects, frames, args.official, bool(stream), size)))
        return

    def run(objects: int, frames: int, stream: bool) -> dict:
        cmd = [sys.executable, __file__, "--worker", str(objects), str(frames), str(int(stream)),
               "--threads", str(args.threads), "--stream-size", args.stream_size] + (["--official"] if args.official else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{objects} objects failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, mobile_sam -> cutie_small, 854x480 frames, "
          f"{'official' if args.official else 'parity'} weights")
    if args.objects:
        print("| objects | embedding (ms) | decoder per object (ms) | click -> first mask (ms) | re-click (ms) "
              "| end-to-end frames/s | peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|")
    for objects in args.objects:
        r = run(objects, args.frames, False)
        print(f"| {objects} | {r['embed_ms']:.0f} | {r['decode_ms']:.0f} | {r['click_ms']:.0f} | "
              f"{r['reclick_ms']:.0f} | {r['fps']:.2f} | {r['peak_rss_mb']:.0f} |")
    if args.stream:
        r = run(1, args.stream, True)
        step = max(args.stream // 10, 1)
        print(f"\n1 object, {args.stream} frames of {args.stream_size} ({r['fps']:.2f} frames/s): resident / malloc in use (MB) after "
              f"every {step} frames: " + ", ".join(f"{rss}/{heap}" for rss, heap in r["memory"]))


if __name__ == "__main__":
    main()
