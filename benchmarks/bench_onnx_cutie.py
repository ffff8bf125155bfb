"""Cutie on ONNX Runtime against PyTorch: ms per tracked frame at 480p for 1 and 3 objects, PyTorch
float32 / ORT float32 / ORT int8 (`maskml export --quantize int8`), graph sizes, and mask IoU
against PyTorch float32.

    python benchmarks/bench_onnx_cutie.py                      # cutie_small, 20 frames, 2 threads
    python benchmarks/bench_onnx_cutie.py --frames 30 --threads 1 --profile

Clip: ../shared/data/videos/cutie_example.mp4 (else a synthetic clip of moving discs), resized to
854 x 480; the objects are 1 or 3 ellipses given as the first frame's mask. The three backends run
in one process, in lockstep (each frame goes through every tracker before the next frame), so
load from other processes falls on all of them alike; the time per frame is the mean over the
tracked frames, memory frames (every mem_every-th, which also run the mask encoder) included.
Weights: --checkpoint PATH, else the official file when it is in the cache, else the deterministic
parity weights of the tests (untrained: the IoU then says how closely the backends agree, not how
well they track). --profile: the time per graph / network call, and ORT float32's time by operator
type (onnxruntime's profiler).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import ROOT, machine_line

sys.path.insert(0, str(ROOT / "tests"))
CLIP = ROOT.parent / "shared" / "data" / "videos" / "cutie_example.mp4"
SIZE = (480, 854)
NETWORK_CALLS = ("encode_image", "read_top_k", "read_memory", "segment", "encode_mask")


def load_clip(count: int):
    """`count` RGB frames of 854 x 480 (uint8 numpy) and where they came from."""
    import cv2
    import numpy as np

    if CLIP.is_file():
        capture = cv2.VideoCapture(str(CLIP))
        frames = []
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.resize(frame[..., ::-1], SIZE[::-1], interpolation=cv2.INTER_AREA))
        capture.release()
        if len(frames) == count:
            return frames, CLIP.name
    h, w = SIZE
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(count):
        frame = np.full((h, w, 3), 60, np.uint8)
        for i, color in enumerate(((220, 60, 60), (60, 200, 80), (70, 90, 230))):
            cx, cy = 200 + 220 * i + 4 * t, 240 + 60 * np.sin(t / 5 + i)
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 70 ** 2] = color
        frames.append(frame)
    return frames, "synthetic discs"


def first_mask(objects: int):
    """1 to 3 ellipses, ids 1..objects, on the 854 x 480 frame."""
    import numpy as np

    h, w = SIZE
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    for i in range(objects):
        cx, cy = 200 + 220 * i, 240
        mask[((xx - cx) / 90) ** 2 + ((yy - cy) / 120) ** 2 < 1] = i + 1
    return mask


def checkpoint_for(given: str | None, scratch: Path) -> tuple[Path, str]:
    from maskml.hub import cache_dir
    from maskml.zoo import get_entry

    if given:
        return Path(given), "given"
    cached = cache_dir() / get_entry("cutie_small").filename
    if cached.is_file():
        return cached, "official"
    from conftest import FIXTURES, write_parity_checkpoint

    return write_parity_checkpoint(FIXTURES / "cutie" / "manifest_cutie_small.json",
                                   scratch / "cutie-small-mega.pth"), "parity (untrained)"


class CallTimes:
    """Wall time spent in each network call of one model (the methods VideoTracker calls)."""

    def __init__(self, model) -> None:
        self.ms = defaultdict(float)
        for name in NETWORK_CALLS:
            method = getattr(model, name)
            setattr(model, name, self._timed(name, method))

    def _timed(self, name, method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            self.ms[name] += 1000 * (time.perf_counter() - start)
            return out
        return call


def track(models: dict, frames, objects: int) -> tuple[dict, dict, dict]:
    """Lockstep run: (mean ms per tracked frame, mask IoU against the first model, ms per network call per frame)."""
    import maskml

    trackers = {label: maskml.VideoTracker(model) for label, model in models.items()}
    calls = {label: CallTimes(model) for label, model in models.items()}
    elapsed = defaultdict(float)
    intersection, union = defaultdict(int), defaultdict(int)
    mask = first_mask(objects)
    reference = next(iter(models))
    for index, frame in enumerate(frames):
        labels = {}
        for label, tracker in trackers.items():
            start = time.perf_counter()
            out = tracker.step(frame, mask) if index == 0 else tracker.step(frame)
            if index:
                elapsed[label] += time.perf_counter() - start
            labels[label] = out.labels
        if index == 0:
            for call in calls.values():
                call.ms.clear()
            continue
        for label, got in labels.items():
            for obj in range(1, objects + 1):
                want = labels[reference] == obj
                intersection[label] += int(((got == obj) & want).sum())
                union[label] += int(((got == obj) | want).sum())
    tracked = len(frames) - 1
    ms = {label: 1000 * t / tracked for label, t in elapsed.items()}
    iou = {label: intersection[label] / union[label] if union[label] else 1.0 for label in models}
    per_call = {label: {name: t / tracked for name, t in call.ms.items()} for label, call in calls.items()}
    return ms, iou, per_call


def profile_by_operator(folder: Path, frames, objects: int) -> list[tuple[str, float]]:
    """Share of ORT float32's graph time by operator type over a short run (onnxruntime's profiler)."""
    import maskml
    import onnxruntime

    from maskml.export.runtime import check_providers

    model = maskml.load_model("cutie_small", checkpoint=folder, backend="onnxruntime")
    by_op = defaultdict(float)
    for name, session in list(model.sessions.items()):
        options = onnxruntime.SessionOptions()
        options.enable_profiling = True
        options.log_severity_level = 3
        options.profile_file_prefix = str(folder / f"profile_{name}")
        options.intra_op_num_threads = session.get_session_options().intra_op_num_threads
        model.sessions[name] = onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                            providers=check_providers(None))
    tracker = maskml.VideoTracker(model)
    tracker.step(frames[0], first_mask(objects))
    for frame in frames[1:]:
        tracker.step(frame)
    for session in model.sessions.values():
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"] / 1000
    total = sum(by_op.values())
    return [(op, ms / total) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="cutie_small checkpoint (default: the cached official file, else the "
                                             "parity weights)")
    parser.add_argument("--frames", type=int, default=20, help="frames of the clip (the first one gives the mask)")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 export")
    parser.add_argument("--profile", action="store_true", help="time per network call and ORT time by operator")
    args = parser.parse_args()
    import torch

    import maskml
    from maskml.export.exporter import export_model

    torch.set_num_threads(args.threads)  # ONNX Runtime takes the same count (maskml.export.runtime)
    print(machine_line(args.threads))
    frames, clip = load_clip(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        checkpoint, source = checkpoint_for(args.checkpoint, scratch)
        folders = {"ORT fp32": export_model("cutie_small", scratch / "fp32", checkpoint, progress=False)}
        if not args.no_int8:
            folders["ORT int8"] = export_model("cutie_small", scratch / "int8", checkpoint, quantize="int8",
                                               progress=False)
        sizes = {label: sum(p.stat().st_size for p in folder.glob("*.onnx")) / 1e6 for label, folder in folders.items()}
        print(f"clip: {clip}, {len(frames)} frames at {SIZE[1]}x{SIZE[0]}; weights: {source}")
        print("\n| objects | backend | graphs MB | ms / frame | vs PyTorch | mask IoU vs PyTorch fp32 |")
        print("|---|---|---|---|---|---|")
        for objects in args.objects:
            models = {"PyTorch fp32": maskml.load_model("cutie_small", checkpoint=checkpoint, progress=False)}
            models.update({label: maskml.load_model("cutie_small", checkpoint=folder, backend="onnxruntime")
                           for label, folder in folders.items()})
            ms, iou, per_call = track(models, frames, objects)
            base = ms["PyTorch fp32"]
            for label in models:
                size = f"{sizes[label]:.1f}" if label in sizes else "-"
                print(f"| {objects} | {label} | {size} | {ms[label]:.0f} | {base / ms[label]:.2f}x | "
                      f"{iou[label]:.4f} |", flush=True)
            if args.profile:
                for label, calls in per_call.items():
                    print(f"  {objects} objects, {label}, ms per frame by call: " +
                          ", ".join(f"{name} {t:.0f}" for name, t in calls.items()), flush=True)
        if args.profile:
            shares = profile_by_operator(folders["ORT fp32"], frames[:8], args.objects[-1])
            print(f"\nORT fp32 time by operator ({args.objects[-1]} objects): " +
                  ", ".join(f"{op} {share:.0%}" for op, share in shares))


if __name__ == "__main__":
    main()
