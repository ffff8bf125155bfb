"""Cutie against outputs of the official implementation (tests/fixtures/cutie), and the tracker API.

Weights are the deterministic parity weights written in the official file layout and loaded by
name + checkpoint path; frames are decoded with Pillow as in the official run. Tolerances are the
fixture README's recommended float32 ones.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import maskml
from conftest import FIXTURES, manifest_keys, write_parity_checkpoint
from maskml import MaskmlError

CUTIE = FIXTURES / "cutie"
CASES = {c["name"]: c for c in json.loads((CUTIE / "cases.json").read_text())["cases"]}

PROB_MAX_ABS = 2e-3
PROB_MEAN_ABS = 2e-5
STATS_ABS = 2e-5
LABEL_MISMATCH = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cutie")
    return {size: write_parity_checkpoint(CUTIE / f"manifest_cutie_{size}.json", root / f"cutie-{size}-mega.pth")
            for size in ("small", "base")}


def frame(path: str) -> np.ndarray:
    return np.array(Image.open(CUTIE / path).convert("RGB"))


@pytest.mark.parametrize("case", list(CASES))
def test_matches_official(checkpoints, case):
    spec = CASES[case]
    expected = np.load(CUTIE / spec["expected_file"])
    model = maskml.load_model(spec["model"], checkpoint=checkpoints[spec["model"].split("_")[1]])
    tracker = maskml.VideoTracker(model, max_internal_size=spec["settings"]["max_internal_size"])
    for step in spec["steps"]:
        i = step["step"]
        if "mask_file" in step:
            mask = np.array(Image.open(CUTIE / step["mask_file"]))
            out = tracker.step(frame(step["frame_file"]), mask, objects=step["mask_object_ids"])
        else:
            out = tracker.step(frame(step["frame_file"]))
        channel_ids = expected[f"channel_ids_{i:02d}"].tolist()
        assert out.object_ids == sorted(channel_ids[1:])
        probs = {obj: out.probs[k].numpy() for k, obj in enumerate(out.object_ids)}
        sub, stats = expected[f"prob_sub_{i:02d}"], expected[f"prob_stats_{i:02d}"]
        for channel, obj in enumerate(channel_ids):
            if obj == 0:
                continue
            p = probs[obj]
            assert np.abs(p[::4, ::4] - sub[channel]).max() <= PROB_MAX_ABS
            assert np.abs(p[::4, ::4] - sub[channel]).mean() <= PROB_MEAN_ABS
            np.testing.assert_allclose([p.mean(), p.std()], stats[channel, :2], rtol=0, atol=STATS_ABS)
        assert (out.labels.numpy() != expected["label"][i]).mean() <= LABEL_MISMATCH


@pytest.mark.parametrize("size", ["small", "base"])
def test_keys_and_shapes_match_released_files(size):
    keys = {k: v for k, v in manifest_keys(CUTIE / f"manifest_cutie_{size}.json").items()
            if not k.startswith("aux_computer.")}  # the training-only auxiliary head, ignored on load
    with torch.device("meta"):
        state = maskml.build_model(f"cutie_{size}").state_dict()
    assert list(state) == list(keys)
    assert {k: list(v.shape) for k, v in state.items()} == keys


def test_options_remove_and_reset(checkpoints):
    model = maskml.load_model("cutie_small", checkpoint=checkpoints["small"])
    with pytest.raises(MaskmlError, match="unknown tracker option 'mem_evry'"):
        maskml.VideoTracker(model, mem_evry=3)
    with pytest.raises(MaskmlError, match="long_term.max_frames"):
        maskml.VideoTracker(model, long_term={"max_frames": 3})
    with pytest.raises(MaskmlError, match="must be int"):
        maskml.VideoTracker(model, top_k="many")
    with pytest.raises(MaskmlError, match="min_mem_frames < long_term.max_mem_frames"):
        maskml.VideoTracker(model, use_long_term=True, long_term={"max_mem_frames": 4})
    tracker = maskml.VideoTracker(model, mem_every=2, use_long_term=True,
                                  long_term={"max_mem_frames": 3, "min_mem_frames": 2, "num_prototypes": 16})
    spec = CASES["cutie_small_judo10_add_objects"]
    first = np.array(Image.open(CUTIE / spec["steps"][0]["mask_file"]))
    second = np.array(Image.open(CUTIE / spec["steps"][5]["mask_file"]))
    combined = np.where(second > 0, second, first)
    with pytest.raises(MaskmlError, match="360"):
        tracker.step(frame(spec["steps"][0]["frame_file"]), combined[:100])
    with pytest.raises(MaskmlError, match="no object"):
        tracker.step(frame(spec["steps"][0]["frame_file"]), np.zeros_like(first))
    out = tracker.step(frame(spec["steps"][0]["frame_file"]), combined)
    assert out.object_ids == [1, 2] and out.probs.shape == (2, 360, 640)
    for step in spec["steps"][1:8]:  # long enough for long-term consolidation to run
        out = tracker.step(frame(step["frame_file"]))
    assert out.object_ids == [1, 2] and torch.isfinite(out.probs).all()
    assert any(tracker.memory.long.size(b) for b in tracker.memory.buckets)
    tracker.remove_objects([1])
    out = tracker.step(frame(spec["steps"][8]["frame_file"]))
    assert out.object_ids == [2] and out.probs.shape == (1, 360, 640)
    assert set(out.labels.unique().tolist()) <= {0, 2}
    tracker.reset()
    out = tracker.step(frame(spec["steps"][9]["frame_file"]))
    assert out.object_ids == [] and out.labels.max() == 0


def test_working_memory_stays_bounded(checkpoints):
    model = maskml.load_model("cutie_small", checkpoint=checkpoints["small"])
    tracker = maskml.VideoTracker(model, mem_every=1, max_mem_frames=3)
    spec = CASES["cutie_small_judo10"]
    tracker.step(frame(spec["steps"][0]["frame_file"]), np.array(Image.open(CUTIE / spec["steps"][0]["mask_file"])))
    for step in spec["steps"][1:]:
        tracker.step(frame(step["frame_file"]))
        bucket = next(iter(tracker.memory.buckets.values()))
        assert bucket.size <= bucket.permanent + 2 * 920  # permanent frame + (max_mem_frames - 1) frames


def test_chunk_size_groups_objects(checkpoints):
    """chunk_size=1 sends objects through the object transformer one by one (its attention masks then
    see one object at a time), so the result may differ slightly, but every object is tracked."""
    model = maskml.load_model("cutie_small", checkpoint=checkpoints["small"])
    spec = CASES["cutie_small_bike4_resize240"]
    mask = np.array(Image.open(CUTIE / spec["steps"][0]["mask_file"]))
    results = []
    for chunk_size in (-1, 1):
        tracker = maskml.VideoTracker(model, chunk_size=chunk_size, max_internal_size=240)
        tracker.step(frame(spec["steps"][0]["frame_file"]), mask)
        results.append(tracker.step(frame(spec["steps"][1]["frame_file"])))
    assert results[0].object_ids == results[1].object_ids == [1, 2]
    assert results[1].probs.shape == results[0].probs.shape and torch.isfinite(results[1].probs).all()


def test_one_object_views_stay_channels_last():
    """A single object's (1, 1, C, H, W) view of channels-last features must reach the convolutions
    as channels-last: read as NCHW, each decoder convolution first copies its whole input."""
    from maskml.models.cutie.modules import GConv2d, flatten_groups, resize_groups

    g = resize_groups(torch.randn(1, 1, 8, 6, 10), 2, "bilinear", channels_last=True)  # (1, 1, 8, 12, 20)
    x = flatten_groups(g)
    assert torch.equal(x, g.flatten(0, 1))
    conv = GConv2d(8, 4, 3, padding=1)
    with torch.inference_mode():
        out = F.conv2d(x, conv.weight, conv.bias, padding=1)
        assert out.stride(1) == 1, "convolution read the view as NCHW"
        assert torch.allclose(conv(g)[:, 0], F.conv2d(g[:, 0].contiguous(), conv.weight, conv.bias, padding=1),
                              atol=1e-6)
