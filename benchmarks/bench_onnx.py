"""ONNX Runtime against PyTorch for the image models: graph sizes, encoder ms, decoder ms per prompt,
and the int8 encoder's mask IoU against float32.

    python benchmarks/bench_onnx.py                                  # mobile_sam, sam_vit_b, sam2.1_hiera_t
    python benchmarks/bench_onnx.py --models mobile_sam --checkpoint mobile_sam=mobile_sam.pt --profile

Per model: PyTorch float32, ORT float32 and ORT int8 (`maskml export --quantize int8`: dynamic
quantization of the encoder's MatMul weights), each behind the same ImagePredictor. Encoder: set_image
on the 1200 x 800 truck fixture; decoder: predict() of one click (median over --runs after a warm-up).
IoU: the int8 masks against the PyTorch float32 masks of the same prompts, on the fixture prompts
(tests/fixtures/sam/cases.json) and three clicks on each sample image (examples/truck.jpg and
../shared/data/images/*.jpg when present). Weights: --checkpoint NAME=PATH, else the official file
when it is in the cache, else the deterministic parity weights of the tests (then the IoU figures
say little about the released models: the weights are not trained). --profile: the int8 encoder's
time by ONNX operator type (onnxruntime's profiler).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from _common import ROOT, machine_line, median_ms

sys.path.insert(0, str(ROOT / "tests"))
FIXTURES = ROOT / "tests" / "fixtures"
PARITY_MANIFESTS = {"mobile_sam": ("sam/manifest_vit_t.json", None), "sam_vit_b": ("sam/manifest_vit_b.json", None),
                    "sam2.1_hiera_t": ("sam2/manifest_sam2.1_hiera_tiny.json", "model")}


def checkpoint_for(name: str, given: dict, scratch: Path) -> tuple[Path, str]:
    from maskml.hub import cache_dir
    from maskml.zoo import get_entry

    if name in given:
        return Path(given[name]), "given"
    cached = cache_dir() / get_entry(name).filename
    if cached.is_file():
        return cached, "official"
    if name not in PARITY_MANIFESTS:
        raise SystemExit(f"{name}: no checkpoint; give --checkpoint {name}=PATH")
    from conftest import write_parity_checkpoint

    manifest, key = PARITY_MANIFESTS[name]
    return write_parity_checkpoint(FIXTURES / manifest, scratch / f"{name}.pt", wrap_key=key), "parity (untrained)"


def fixture_prompts() -> list[dict]:
    cases = json.loads((FIXTURES / "sam" / "cases.json").read_text())["cases"]
    prompts = []
    for case in cases:
        if case["kind"] == "predict" and case["model"] == "vit_t" and not case["prompts"]["mask_input"]:
            p = case["prompts"]
            prompts.append(dict(points=p["point_coords"], labels=p["point_labels"], box=p["box"],
                                multimask=case["options"]["multimask_output"]))
    return prompts


def sample_images() -> list[Path]:
    shared = ROOT.parent / "shared" / "data" / "images"
    return [ROOT / "examples" / "truck.jpg", *sorted(shared.glob("*.jpg"))]


def clicks(image) -> list[dict]:
    h, w = image.shape[:2]
    return [dict(points=[[w * fx, h * fy]], labels=[1], multimask=True)
            for fx, fy in ((0.5, 0.5), (0.3, 0.6), (0.7, 0.4))]


def best_masks(predictor, prompts):
    masks = []
    for prompt in prompts:
        out = predictor.predict(**prompt)
        masks.append(out.masks[out.best()])
    return masks


def mean_iou(a, b) -> float:
    ious = [float((x & y).sum() / (x | y).sum().clamp(min=1)) for x, y in zip(a, b)]
    return sum(ious) / len(ious)


def profile_encoder(predictor, image) -> list[tuple[str, float]]:
    """Share of the ORT encoder's time by operator type, from one profiled set_image."""
    import onnxruntime

    model = predictor.model
    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = str(model.folder / "profile")
    options.intra_op_num_threads = model.encoder.get_session_options().intra_op_num_threads
    plain = model.encoder
    model.encoder = onnxruntime.InferenceSession(str(model.folder / "encoder.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
    predictor.set_image(image)
    events = json.loads(Path(model.encoder.end_profiling()).read_text())
    model.encoder = plain
    by_op = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000
    total = sum(by_op.values())
    return [(op, ms / total) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]]


def bench_model(name: str, checkpoint: Path, scratch: Path, runs: int, profile: bool) -> dict:
    import maskml
    from maskml.export.exporter import export_model
    from maskml.io.images import read_image

    truck = read_image(FIXTURES / "sam" / "truck_1200x800.png")
    folders = {"ORT fp32": export_model(name, scratch / f"{name}_fp32", checkpoint, progress=False),
               "ORT int8": export_model(name, scratch / f"{name}_int8", checkpoint, quantize="int8", progress=False)}
    predictors = {"PyTorch fp32": maskml.ImagePredictor(maskml.load_model(name, checkpoint=checkpoint))}
    for label, folder in folders.items():
        predictors[label] = maskml.ImagePredictor(maskml.load_model(name, checkpoint=folder, backend="onnxruntime"))
    rows = {}
    click = dict(points=[[500.0, 375.0]], labels=[1], multimask=True)
    for label, predictor in predictors.items():
        encoder_ms = median_ms(lambda: predictor.set_image(truck), runs)
        decoder_ms = median_ms(lambda: predictor.predict(**click), max(runs, 5))
        folder = folders.get(label)
        rows[label] = {"encoder_mb": (folder / "encoder.onnx").stat().st_size / 1e6 if folder else None,
                       "decoder_mb": (folder / "decoder.onnx").stat().st_size / 1e6 if folder else None,
                       "encoder_ms": encoder_ms, "decoder_ms": decoder_ms}
    ious = {}
    sets = [("fixture prompts", truck, fixture_prompts())] + [
        (path.name, image, clicks(image)) for path in sample_images() for image in [read_image(path)]]
    for set_name, image, prompts in sets:
        masks = {}
        for label in ("PyTorch fp32", "ORT fp32", "ORT int8"):
            predictors[label].set_image(image)
            masks[label] = best_masks(predictors[label], prompts)
        ious[set_name] = {label: mean_iou(masks[label], masks["PyTorch fp32"]) for label in ("ORT fp32", "ORT int8")}
    result = {"rows": rows, "iou": ious}
    if profile:
        result["int8_encoder_profile"] = profile_encoder(predictors["ORT int8"], truck)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobile_sam", "sam_vit_b", "sam2.1_hiera_t"])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="the int8 encoder's time by operator type")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    given = dict(item.split("=", 1) for item in args.checkpoint)
    print(machine_line(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name in args.models:
            checkpoint, source = checkpoint_for(name, given, scratch)
            result = bench_model(name, checkpoint, scratch, args.runs, args.profile)
            torch_ms = result["rows"]["PyTorch fp32"]["encoder_ms"]
            print("\n| model (weights) | backend | encoder.onnx MB | decoder.onnx MB | encoder ms | decoder ms / prompt |")
            print("|---|---|---|---|---|---|")
            for label, row in result["rows"].items():
                size = lambda mb: f"{mb:.1f}" if mb is not None else "-"  # noqa: E731
                speed = f" ({torch_ms / row['encoder_ms']:.2f}x)" if label != "PyTorch fp32" else ""
                print(f"| {name} ({source}) | {label} | {size(row['encoder_mb'])} | {size(row['decoder_mb'])} | "
                      f"{row['encoder_ms']:.0f}{speed} | {row['decoder_ms']:.1f} |", flush=True)
            print()
            for set_name, ious in result["iou"].items():
                print(f"{name} mask IoU vs PyTorch fp32 on {set_name}: " +
                      ", ".join(f"{label} {iou:.4f}" for label, iou in ious.items()))
            if "int8_encoder_profile" in result:
                print(f"{name} int8 encoder time by operator: " + ", ".join(
                    f"{op} {share:.0%}" for op, share in result["int8_encoder_profile"]), flush=True)


if __name__ == "__main__":
    main()
