"""SAM 2 video frame time on ONNX Runtime against PyTorch, in one process with one thread count.

    python benchmarks/bench_onnx_sam2_video.py                      # sam2.1_hiera_t, stand-in weights
    python benchmarks/bench_onnx_sam2_video.py --checkpoint sam2.1_hiera_tiny.pt --frames 8 --int8 --profile

The same VideoSession tracks 1 and 3 objects (clicks on frame 0 of examples/judo, 854 x 480) through
--frames frames on each backend: PyTorch float32, ORT float32 (the `maskml export` folder), and with
--int8 ORT with the memory attention and memory encoder graphs dynamically quantized (int8 MatMul
weights; the image encoder and decoders stay float32). ms/frame: median over the propagated frames
after frame 0 (the prompted frame), each frame's decoding, resizing and image encoding included.
IoU: the int8 masks against ORT float32, min over frames and objects. --profile: per frame, the time
spent in each model step (image encoder, memory attention, SAM heads, memory encoder), summed over objects.
Weights: --checkpoint, else the deterministic parity weights of the tests with every object scored
present (timing does not depend on the values; IoU figures say little about the released model then).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import ROOT, machine_line

sys.path.insert(0, str(ROOT / "tests"))
CLIP = ROOT / "examples" / "judo"
CLICKS = [(465, 260), (370, 280), (660, 160)]  # judo frame 0: right fighter, left fighter, standing man
PRESENT_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
STEPS = ("encode_resized", "attend_memory", "predict_masks", "encode_memory")


def stand_in_checkpoint(scratch: Path) -> Path:
    import torch

    from conftest import FIXTURES, manifest_keys
    from weights import fill_state_dict

    state = fill_state_dict(manifest_keys(FIXTURES / "sam2" / "manifest_sam2.1_hiera_tiny.json"))
    state[PRESENT_BIAS] = torch.full_like(state[PRESENT_BIAS], 10.0)  # every object present: masks, not -1024
    path = scratch / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    return path


def quantized_copy(folder: Path, dest: Path) -> Path:
    """The export with memory_attention.onnx and memory_encoder.onnx dynamically quantized (int8 MatMul)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from maskml.export import MANIFEST
    from maskml.hub import sha256_of

    shutil.copytree(folder, dest, copy_function=os.link)
    for graph in ("memory_attention", "memory_encoder"):
        path = dest / f"{graph}.onnx"
        path.unlink()
        logging.disable(logging.WARNING)
        quantize_dynamic(folder / path.name, path, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        logging.disable(logging.NOTSET)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {name: sha256_of(dest / name) for name in manifest["files"]}
    (dest / MANIFEST).unlink()
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dest


def timed_steps(model, spent: dict) -> None:
    """Wrap the model's per-frame steps so that their time adds up in `spent`."""
    for name in STEPS:
        method = getattr(model, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - start

        setattr(model, name, timed)


def track(model, frames, objects: int) -> tuple[float, dict, list]:
    """Median ms per propagated frame, median ms per step and frame, and each frame's masks."""
    import maskml

    spent: dict = defaultdict(float)
    timed_steps(model, spent)
    session = maskml.VideoSession(model, frames)
    for obj, click in enumerate(CLICKS[:objects], start=1):
        session.add_points(0, obj, [click], [1])
    times, steps, masks = [], defaultdict(list), []
    start = time.perf_counter()
    for step in session.propagate():
        now = time.perf_counter()
        if step.frame_idx > 0:
            times.append(1000 * (now - start))
            for name in STEPS:
                steps[name].append(1000 * spent[name])
        spent.clear()
        masks.append(step.logits > 0)
        start = time.perf_counter()
    return statistics.median(times), {k: statistics.median(v) for k, v in steps.items()}, masks


def min_iou(got: list, want: list) -> float:
    worst = 1.0
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            union = int((a | b).sum())
            worst = min(worst, float((a & b).sum()) / union if union else 1.0)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="sam2.1_hiera_t checkpoint (default: stand-in weights)")
    parser.add_argument("--export", help="its `maskml export` folder (default: exported here, to a temporary folder)")
    parser.add_argument("--frames", type=int, default=6, help="frames tracked, frame 0 included (default 6)")
    parser.add_argument("--objects", default="1,3", help="object counts (default 1,3)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--int8", action="store_true", help="also ORT with int8 memory attention / memory encoder")
    parser.add_argument("--profile", action="store_true", help="time per model step")
    args = parser.parse_args()

    import numpy as np
    import torch

    import maskml
    from maskml.export.exporter import export_model
    from maskml.io.video import open_video

    if args.threads:
        torch.set_num_threads(args.threads)  # the ORT backend takes torch's thread count
    video = open_video(CLIP)
    frames = np.stack([video.frame(i) for i in range(args.frames)])
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else stand_in_checkpoint(scratch)
        folder = Path(args.export) if args.export else export_model("sam2.1_hiera_t", scratch / "onnx", checkpoint,
                                                                    progress=False)
        backends = {"PyTorch fp32": lambda: maskml.load_model("sam2.1_hiera_t", checkpoint=checkpoint,
                                                              progress=False),
                    "ORT fp32": lambda: maskml.load_model("sam2.1_hiera_t", checkpoint=folder, backend="onnxruntime")}
        sizes = {"ORT fp32": sum((folder / f"{g}.onnx").stat().st_size for g in ("memory_attention", "memory_encoder"))}
        if args.int8:
            int8 = quantized_copy(folder, scratch / "int8")
            backends["ORT int8 memory"] = lambda: maskml.load_model("sam2.1_hiera_t", checkpoint=int8,
                                                                    backend="onnxruntime")
            sizes["ORT int8 memory"] = sum((int8 / f"{g}.onnx").stat().st_size
                                           for g in ("memory_attention", "memory_encoder"))
        print(machine_line(torch.get_num_threads()))
        print(f"sam2.1_hiera_t, {args.frames} frames of {frames.shape[2]}x{frames.shape[1]} "
              f"({'given weights' if args.checkpoint else 'stand-in weights'})")
        print("| backend | objects | ms/frame | vs PyTorch | memory graphs MB | IoU vs ORT fp32 |"
              + ("".join(f" {s} ms |" for s in STEPS) if args.profile else ""))
        print("|---|---|---|---|---|---|" + ("---|" * len(STEPS) if args.profile else ""))
        for objects in (int(n) for n in args.objects.split(",")):
            results = {}
            for name, load in backends.items():
                results[name] = track(load(), frames, objects)
            for name, (ms, steps, masks) in results.items():
                size = f"{sizes[name] / 1e6:.1f}" if name in sizes else "-"
                iou = f"{min_iou(masks, results['ORT fp32'][2]):.4f}" if name != "ORT fp32" else "-"
                row = (f"| {name} | {objects} | {ms:.0f} | {results['PyTorch fp32'][0] / ms:.2f}x | {size} | {iou} |")
                if args.profile:
                    row += "".join(f" {steps.get(s, 0):.0f} |" for s in STEPS)
                print(row, flush=True)


if __name__ == "__main__":
    main()
