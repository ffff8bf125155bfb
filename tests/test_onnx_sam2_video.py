"""SAM 2 video on ONNX Runtime against maskml's PyTorch model, with the sam2.1_hiera_t parity weights: the same
VideoSession / Sam2Tracker / `maskml track` code on both backends. Measured here (float32, CPU): video logits
differ by at most 2.7e-4 over a propagation with 2 objects and a correction, the memory attention graph by
4e-6; the tolerances below leave about 4x margin. Masks IoU >= 0.998."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES
from maskml.cli import main
from maskml.errors import MaskmlError
from maskml.export import MANIFEST
from maskml.export.sam2_video import OnnxFrameFeatures
from maskml.io.masks import read_mask
from maskml.io.video import open_video
from maskml.models.sam2.sam2 import FrameFeatures
from maskml.predict.sam2.tracker import to_tracker_output

FRAMES = FIXTURES / "sam2" / "inputs" / "bedroom"
LOGITS_TOLERANCE = 1e-3
MEMORY_ATTENTION_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def models(sam2_checkpoint, sam2_onnx_export):
    return {"torch": maskml.load_model("sam2.1_hiera_t", checkpoint=sam2_checkpoint),
            "onnxruntime": maskml.load_model("sam2.1_hiera_t", checkpoint=sam2_onnx_export, backend="onnxruntime")}


@pytest.fixture(scope="module")
def frames():
    video = open_video(FRAMES)
    return np.stack([video.frame(i) for i in range(3)])


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def assert_same_logits(got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    assert got.shape == want.shape, where
    error = (got - want).abs().max().item()
    assert error <= LOGITS_TOLERANCE, f"{where}: logits differ by {error:.2e}"
    for obj, (g, w) in enumerate(zip(got > 0, want > 0)):
        assert mask_iou(g, w) >= 0.998, f"{where}, object {obj}: mask IoU {mask_iou(g, w):.5f}"


def session_steps(model, frames) -> tuple[list, list]:
    """A click and a box on frame 0, propagated; a correction click on frame 2, which the next propagation from
    there recomputes (as officially)."""
    session = maskml.VideoSession(model, frames, cached_frames=3)
    steps = [session.add_points(0, 1, [[105, 105]], [1]), session.add_box(0, 2, [389, 13, 479, 125])]
    steps += list(session.propagate())
    steps.append(session.add_points(2, 1, [[140, 120]], [0]))
    steps += list(session.propagate(start=2, max_frames=0))
    scores = [float(session.objects[obj].output(t).object_score) for obj in (1, 2) for t in range(3)]
    return steps, scores


@pytest.fixture(scope="module")
def steps(models, frames):
    return {backend: session_steps(model, frames) for backend, model in models.items()}


def test_video_session_matches_pytorch(steps):
    (want, want_scores), (got, got_scores) = steps["torch"], steps["onnxruntime"]
    assert [s.frame_idx for s in got] == [s.frame_idx for s in want] == [0, 0, 0, 1, 2, 2, 2]
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.obj_ids == w.obj_ids
        assert_same_logits(g.logits, w.logits, f"step {i} (frame {w.frame_idx})")
    np.testing.assert_allclose(got_scores, want_scores, atol=LOGITS_TOLERANCE, rtol=0)


@pytest.mark.parametrize("frames_in_memory,pointers", [(1, 0), (2, 5)])  # 0: tracking before the prompt
def test_memory_attention_graph_takes_memories_of_any_length(models, frames_in_memory, pointers):
    torch_model, onnx_model = models["torch"], models["onnxruntime"]
    generator = torch.Generator().manual_seed(frames_in_memory)
    features = torch.randn(1, 256, 64, 64, generator=generator)
    spatial = [(torch.randn(1, 64, 64, 64, generator=generator).to(torch.bfloat16), slot)
               for slot in (6, 0, 1)[:frames_in_memory]]
    ptrs = [(d, torch.randn(1, 256, generator=generator)) for d in range(1, pointers + 1)]
    with torch.inference_mode():
        pos = torch_model.image_encoder.neck.position_encoding(features)[:1]
        want = torch_model.attend_memory(FrameFeatures(features, pos, []), spatial, ptrs, 15)
    got = onnx_model.attend_memory(OnnxFrameFeatures(features, None, []), spatial, ptrs, 15)
    error = (got - want).abs().max().item()
    assert error <= MEMORY_ATTENTION_TOLERANCE, f"{frames_in_memory} frames, {pointers} pointers: {error:.2e}"


def test_tracker_with_a_mask_in_a_pipeline_matches_pytorch(models, frames):
    ids = np.zeros(frames.shape[1:3], np.uint8)
    ids[20:120, 390:470] = 2
    outputs = {}
    for backend, model in models.items():
        pipe = maskml.Pipeline(maskml.Sam2Tracker(model))
        outputs[backend] = [pipe.step(frames[0], mask=ids), pipe.step(frames[1])]
    for got, want in zip(outputs["onnxruntime"], outputs["torch"]):
        assert got.object_ids == want.object_ids == [2]
        assert (got.probs - want.probs).abs().max() <= LOGITS_TOLERANCE / 4  # a probability moves <= logit / 4
        assert mask_iou(got.labels == 2, want.labels == 2) >= 0.998


def test_track_command_on_onnxruntime(sam2_onnx_export, steps, tmp_path):
    """`maskml track --backend onnxruntime` with the session test's prompts: PyTorch's label maps."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        shutil.copy(FRAMES / f"{i:05d}.jpg", folder)
    out = tmp_path / "out"
    assert main(["track", str(folder), "--model", "sam2.1_hiera_t", "--checkpoint", str(sam2_onnx_export),
                 "--backend", "onnxruntime", "--point", "1:0:105,105", "--box", "2:0:389,13,479,125",
                 "--direction", "forward", "--out", str(out)]) == 0
    for frame, step in enumerate(steps["torch"][0][2:5]):  # the first propagation
        want = to_tracker_output(step.obj_ids, step.logits).labels
        got = torch.from_numpy(read_mask(out / f"{frame:05d}.png").astype(np.int64))
        for obj in (1, 2):
            assert (want == obj).any() and mask_iou(got == obj, want == obj) >= 0.998, (frame, obj)


def test_export_lists_the_video_graphs_and_a_folder_without_them_is_one_clear_error(sam2_onnx_export, tmp_path,
                                                                                      frames):
    manifest = json.loads((sam2_onnx_export / MANIFEST).read_text())
    video = ("memory_attention", "memory_encoder", "video_decoder", "mask_pointer")
    assert set(manifest["graphs"]) == {"encoder", "decoder", "decoder_lowres", *video}
    assert manifest["video"]["num_maskmem"] == 7 and manifest["video"]["max_obj_ptrs"] == 16
    assert "backbone_embeddings" in manifest["graphs"]["encoder"]["outputs"]
    # the rotary tables are stored once, not once per use: the graph is about its weights' size (24 MB)
    assert (sam2_onnx_export / "memory_attention.onnx").stat().st_size < 40e6
    image_only = tmp_path / "image_only"
    shutil.copytree(sam2_onnx_export, image_only, copy_function=os.link)
    (image_only / MANIFEST).unlink()  # a new file, not the linked one
    (image_only / MANIFEST).write_text(json.dumps(dict(
        manifest, graphs={k: v for k, v in manifest["graphs"].items() if k not in video})))
    model = maskml.load_model("sam2.1_hiera_t", checkpoint=image_only, backend="onnxruntime")
    session = maskml.VideoSession(model, frames[:1])
    with pytest.raises(MaskmlError, match="holds no SAM 2 video graphs .* export it again"):
        session.add_points(0, 1, [[105, 105]], [1])
