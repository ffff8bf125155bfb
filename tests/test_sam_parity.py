"""SAM / MobileSAM against outputs of the official implementations (tests/fixtures/sam).

Weights are the deterministic parity weights, written in the official file layout
and loaded by name + checkpoint path. Tolerances are the fixture README's Tier A
(bit-exact preprocessing): float32 rounding floor of the official code x 10.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES, manifest_keys, unpack_masks
from maskml.predict import ImagePredictor
from maskml.predict.resize import longest_side_shape, resize_bilinear_like_pillow

SAM = FIXTURES / "sam"
CASES = {c["name"]: c for c in json.loads((SAM / "cases.json").read_text())["cases"]}
MODEL_NAMES = {"vit_t": "mobile_sam", "vit_b": "sam_vit_b"}

EMBEDDING_TOL = 1e-4
IOU_TOL = 1e-5
LOW_RES_TOL = 5e-5
LOGITS_TOL = 5e-5
MASK_FLIP_TOL = 2e-5


def stats(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    x = x.astype(np.float64)
    return np.stack([x.mean(axes), x.std(axes), np.abs(x).mean(axes), x.min(axes), x.max(axes)], axis=-1)


@pytest.fixture(scope="module")
def predictors(sam_checkpoints, truck_image):
    """One predictor per model with the truck image set (the encoder runs once)."""
    cache = {}

    def get(model_key: str) -> ImagePredictor:
        if model_key not in cache:
            name = MODEL_NAMES[model_key]
            predictor = ImagePredictor(maskml.load_model(name, checkpoint=sam_checkpoints[name]))
            predictor.set_image(truck_image)
            cache[model_key] = predictor
        return cache[model_key]

    return get


def test_preprocess_resize_is_bit_exact(truck_image):
    expected = np.load(SAM / "expected_preprocess.npz")
    size = longest_side_shape(*truck_image.shape[:2], 1024)
    resized = resize_bilinear_like_pillow(torch.from_numpy(truck_image), size).numpy()
    assert resized.shape == tuple(expected["resized_shape"])
    assert hashlib.sha256(resized.tobytes()).hexdigest() == CASES["preprocess"]["resized_sha256"]
    np.testing.assert_array_equal(resized[::4, ::4], expected["resized_sub"])


@pytest.mark.parametrize("model_key", ["vit_t", "vit_b"])
def test_image_embedding(predictors, model_key):
    expected = np.load(SAM / f"expected_{model_key}_embedding.npz")
    predictor = predictors(model_key)
    embedding = predictor.get_image_embedding()[0].numpy()
    assert predictor.input_size == tuple(expected["input_size"])
    assert predictor.original_size == tuple(expected["original_size"])
    np.testing.assert_allclose(embedding[::4, ::4, ::4], expected["embedding_sub"], rtol=0, atol=EMBEDDING_TOL)
    full = embedding.astype(np.float64)
    summary = [full.mean(), full.std(), np.abs(full).mean(), np.abs(full).max()]
    np.testing.assert_allclose(summary, expected["embedding_stats"], rtol=0, atol=EMBEDDING_TOL)


def check_outputs(out, expected, batch_axes: int) -> None:
    """Compare a Prediction with an official predict()/predict_torch() record."""
    np.testing.assert_allclose(out.scores.numpy(), expected["iou_predictions"], rtol=0, atol=IOU_TOL)
    low_res = out.low_res_logits.numpy()
    logits = out.logits.numpy()
    np.testing.assert_allclose(low_res[..., ::2, ::2], expected["low_res_logits_sub"], rtol=0, atol=LOW_RES_TOL)
    np.testing.assert_allclose(logits[..., ::8, ::8], expected["logits_sub"], rtol=0, atol=LOGITS_TOL)
    np.testing.assert_allclose(stats(low_res, (-2, -1)), expected["low_res_logits_stats"], rtol=0, atol=LOW_RES_TOL)
    np.testing.assert_allclose(stats(logits, (-2, -1)), expected["logits_stats"], rtol=0, atol=LOGITS_TOL)
    official = unpack_masks(expected)
    masks = out.masks.numpy()
    assert masks.shape == official.shape and masks.dtype == bool
    flipped = (masks != official).reshape(-1, *official.shape[-2:]).mean(axis=(-2, -1))
    assert flipped.max() <= MASK_FLIP_TOL
    assert np.array_equal(masks, logits > 0)


PREDICT_CASES = [name for name, c in CASES.items() if c["kind"] == "predict"]


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict(predictors, case):
    spec = CASES[case]
    expected = np.load(SAM / spec["expected"])
    prompts = spec["prompts"]
    out = predictors(spec["model"]).predict(
        points=prompts["point_coords"], labels=prompts["point_labels"], box=prompts["box"],
        mask_input=expected["input_mask_input"] if prompts["mask_input"] is not None else None,
        multimask=spec["options"]["multimask_output"])
    assert out.masks.shape[0] == spec["output_channels"]
    check_outputs(out, expected, batch_axes=0)


def test_predict_batched_boxes(predictors):
    expected = np.load(SAM / "expected_vit_t_t1_predict_torch_3boxes.npz")
    out = predictors("vit_t").predict(boxes=expected["input_boxes"], multimask=False)
    assert out.masks.shape == (3, 1, 800, 1200)
    check_outputs(out, expected, batch_axes=1)


@pytest.mark.parametrize("name,manifest", [("sam_vit_l", "manifest_vit_l.json"), ("sam_vit_h", "manifest_vit_h.json")])
def test_large_models_match_official_keys_and_shapes(name, manifest):
    keys = manifest_keys(SAM / manifest)
    with torch.device("meta"):
        state = maskml.build_model(name).state_dict()
    assert list(state) == list(keys)
    assert {k: list(v.shape) for k, v in state.items()} == keys


def test_mobile_sam_file_keys_are_accepted_exactly(sam_checkpoints):
    """The released mobile_sam.pt carries TinyViT's classifier; everything else must be used."""
    keys = manifest_keys(SAM / "manifest_vit_t.json")
    model_keys = set(maskml.build_model("mobile_sam").state_dict())
    extra = set(keys) - model_keys
    assert extra == {"image_encoder.norm_head.weight", "image_encoder.norm_head.bias",
                     "image_encoder.head.weight", "image_encoder.head.bias"}
    assert model_keys <= set(keys)
