"""Cutie exported to ONNX and tracked by the same VideoTracker on ONNX Runtime, against maskml's PyTorch
Cutie on the public fixtures (the parity weights and the judo frames of tests/fixtures/cutie).

Tolerance: per-frame probabilities within PROB_MAX_ABS of PyTorch's. Measured on the run below
(360 x 640 frames, memory of 1 to 5 frames, 1 then 2 objects in 2 buckets): at most 1.3e-5, mean
about 1e-8 (float32 summation order: ONNX Runtime's convolutions and matrix products against
PyTorch's); the bound leaves a margin of about 8x. Masks: IoU >= 0.998 over the whole run.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import maskml
from conftest import FIXTURES
from maskml.cli import main
from maskml.errors import MaskmlError
from maskml.export import MANIFEST
from maskml.export.cutie import OnnxCutie
from maskml.export.exporter import export_model
from maskml.io.masks import read_mask

CUTIE = FIXTURES / "cutie"
JUDO = {c["name"]: c for c in json.loads((CUTIE / "cases.json").read_text())["cases"]}[
    "cutie_small_judo10_add_objects"]  # object 1 from frame 0, object 2 added on frame 5 (a second bucket)
PROB_MAX_ABS = 1e-4
MASK_IOU = 0.998


def fixture_frame(path: str) -> np.ndarray:
    return np.array(Image.open(CUTIE / path).convert("RGB"))


def test_tracks_as_pytorch_with_a_growing_memory(cutie_onnx_export, cutie_small_checkpoint):
    """mem_every=2: the memory grows by a frame every other frame (1 to 5 frames of 920 entries), so
    the memory readout runs at several lengths, with 1 and 2 objects, per bucket."""
    models = {"torch": maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint),
              "onnxruntime": maskml.load_model("cutie_small", checkpoint=cutie_onnx_export, backend="onnxruntime")}
    assert isinstance(models["onnxruntime"], OnnxCutie)
    trackers = {name: maskml.VideoTracker(model, mem_every=2) for name, model in models.items()}
    intersection, union = torch.zeros(3), torch.zeros(3)
    memory_lengths, object_counts = set(), set()
    for step in JUDO["steps"]:
        outputs = {}
        for name, tracker in trackers.items():
            if "mask_file" in step:
                mask = np.array(Image.open(CUTIE / step["mask_file"]))
                outputs[name] = tracker.step(fixture_frame(step["frame_file"]), mask, objects=step["mask_object_ids"])
            else:
                outputs[name] = tracker.step(fixture_frame(step["frame_file"]))
        want, got = outputs["torch"], outputs["onnxruntime"]
        assert got.object_ids == want.object_ids
        error = (got.probs - want.probs).abs().max().item()
        assert error <= PROB_MAX_ABS, f"frame {step['step']}: probabilities differ by {error:.2e}"
        for obj in want.object_ids:
            intersection[obj] += ((got.labels == obj) & (want.labels == obj)).sum()
            union[obj] += ((got.labels == obj) | (want.labels == obj)).sum()
        buckets = trackers["onnxruntime"].memory.buckets.values()
        memory_lengths |= {b.size for b in buckets}
        object_counts.add(len(got.object_ids))
    assert len(memory_lengths) >= 4 and object_counts == {1, 2}
    assert union[1:].min() > 0  # both objects are on the frames
    iou = intersection[1:] / union[1:]
    assert iou.min() >= MASK_IOU, f"mask IoU {iou.tolist()}"


def test_graphs_take_any_memory_length_and_object_count(cutie_onnx_export, cutie_small_checkpoint):
    """The memory readout and the object-wise graphs at sizes none of them was traced with."""
    torch_model = maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)
    onnx_model = maskml.load_model("cutie_small", checkpoint=cutie_onnx_export, backend="onnxruntime")
    generator = torch.Generator().manual_seed(1)
    for objects, memory, top_k, (h, w) in [(1, 77, 30, (3, 5)), (3, 1000, 30, (7, 4)), (2, 12, 30, (2, 2))]:
        query = (torch.randn(1, 64, h * w, generator=generator), torch.rand(1, 64, h * w, generator=generator))
        mem = (torch.randn(1, 64, memory, generator=generator), torch.rand(1, 1, memory, generator=generator) + 1,
               torch.randn(1, objects * 256, memory, generator=generator))
        with torch.inference_mode():
            want = torch_model.read_top_k(*query, *mem, top_k)
        got = onnx_model.read_top_k(*query, *mem, top_k)
        assert got[0].shape == (1, objects * 256, h * w) and got[1].shape[-1] == min(top_k, memory)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        pixel = torch.randn(1, objects, 256, h, w, generator=generator)
        pix_feat = torch.randn(1, 256, h, w, generator=generator)
        sensory = torch.randn(1, objects, 256, h, w, generator=generator)
        last_mask = torch.rand(1, objects, h * 16, w * 16, generator=generator)
        summaries = torch.rand(1, objects, 16, 257, generator=generator)
        with torch.inference_mode():
            want = torch_model.read_memory(pixel, pix_feat, sensory, last_mask, summaries)
        torch.testing.assert_close(onnx_model.read_memory(pixel, pix_feat, sensory, last_mask, summaries), want,
                                   atol=1e-3, rtol=1e-4)


def test_folder_of_another_model_or_a_corrupt_graph_is_one_clear_error(cutie_onnx_export, tmp_path, capsys):
    with pytest.raises(MaskmlError, match="holds the ONNX export of cutie_small, not cutie_base"):
        maskml.load_model("cutie_base", checkpoint=cutie_onnx_export, backend="onnxruntime")
    with pytest.raises(MaskmlError, match="holds the ONNX export of cutie_small, not mobile_sam"):
        maskml.load_model("mobile_sam", checkpoint=cutie_onnx_export, backend="onnxruntime")
    broken = shutil.copytree(cutie_onnx_export, tmp_path / "broken")
    with open(broken / "object_transformer.onnx", "r+b") as f:
        f.seek(5000)
        f.write(b"\0\0\0\0")
    out = tmp_path / "out"
    assert main(["track", str(CUTIE / "inputs" / "images" / "judo"), "--model", "cutie_small", "--checkpoint",
                 str(broken), "--backend", "onnxruntime", "--mask-dir", str(CUTIE / "inputs" / "masks" / "judo"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "object_transformer.onnx is corrupt (its SHA-256 differs" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    manifest = json.loads((cutie_onnx_export / MANIFEST).read_text())
    assert manifest["model"] == "cutie_small" and manifest["family"] == "cutie"
    assert set(manifest["files"]) == {f"{g}.onnx" for g in manifest["graphs"]}
    assert "memory" in json.dumps(manifest["graphs"]["memory_readout"]["inputs"])


def test_track_command_on_onnxruntime(cutie_onnx_export, cutie_small_checkpoint, small_judo, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    first, second = (np.array(Image.open(CUTIE / "inputs" / "masks" / "judo" / f"{i:05d}.png")) for i in (0, 5))
    both = Image.fromarray(np.where(second > 0, second, first).astype(np.uint8), mode="P")
    both.putpalette(Image.open(CUTIE / "inputs" / "masks" / "judo" / "00000.png").getpalette())
    both.resize((160, 96), Image.NEAREST).save(masks / "00000.png")
    results = {}
    for backend, checkpoint in (("torch", cutie_small_checkpoint), ("onnxruntime", cutie_onnx_export)):
        out = tmp_path / backend
        assert main(["track", str(small_judo), "--model", "cutie_small", "--checkpoint", str(checkpoint),
                     "--backend", backend, "--mask-dir", str(masks), "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip().endswith(f"6 frames, objects [1, 2] -> {out}")
        results[backend] = np.stack([read_mask(p) for p in sorted(out.glob("*.png"))])
    want, got = results["torch"], results["onnxruntime"]
    for obj in (1, 2):
        union = ((got == obj) | (want == obj)).sum()
        assert union > 0 and ((got == obj) & (want == obj)).sum() / union >= MASK_IOU
