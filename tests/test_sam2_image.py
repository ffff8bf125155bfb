"""SAM 2.1 through maskml.ImagePredictor against the official SAM2ImagePredictor (tests/fixtures/sam2;
tolerances from the fixture README: logits max-abs 1e-3 / mean-abs 1e-4, IoU and object scores 1e-4,
mask IoU >= 0.999)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import maskml
from conftest import FIXTURES

SAM2 = FIXTURES / "sam2"
TRUCK = SAM2 / "inputs" / "truck_1200x800.jpg"
CASES = {
    "point": dict(points=[[333.5, 250.25]], labels=[1], multimask=True),
    "3points": dict(points=[[333.5, 250.25], [750.0, 417.0], [383.0, 500.0]], labels=[1, 1, 0], multimask=False),
    "box": dict(box=[283.0, 400.0, 467.0, 583.0], multimask=False),
}


@pytest.fixture(scope="module")
def predictor(sam2_checkpoint):
    p = maskml.ImagePredictor(maskml.load_model("sam2.1_hiera_t", checkpoint=sam2_checkpoint))
    image = np.array(Image.open(TRUCK).convert("RGB"))
    p.set_image(image)
    return p


def stats(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.stack([x.mean((-2, -1)), x.std((-2, -1)), np.abs(x).mean((-2, -1))], axis=-1)


@pytest.mark.parametrize("case", list(CASES))
def test_predict_matches_official(predictor, case):
    expected = np.load(SAM2 / f"expected_image_truck_{case}.npz")
    out = predictor.predict(**CASES[case])
    np.testing.assert_allclose(out.scores.numpy(), expected["iou_predictions"], atol=1e-4, rtol=0)
    logits, low_res = out.logits.numpy(), out.low_res_logits.numpy()
    assert logits.shape == tuple(expected["masks_shape"]) and low_res.shape == tuple(expected["low_res_logits_shape"])
    for name, x, sub in (("logits", logits, logits[:, ::8, ::8]), ("low_res_logits", low_res, low_res[:, ::4, ::4])):
        err = np.abs(sub - expected[f"{name}_sub"])
        assert err.max() <= 1e-3 and err.mean() <= 1e-4, f"{name}: max {err.max():.2e} mean {err.mean():.2e}"
        np.testing.assert_allclose(stats(x), expected[f"{name}_stats"], atol=1e-4, rtol=0)
    c, h, w = (int(v) for v in expected["masks_shape"])
    ref = np.unpackbits(expected["masks_packed"], axis=-1)[:, :h * w].reshape(c, h, w) > 0
    masks = out.masks.numpy()
    iou = (masks & ref).sum((1, 2)) / (masks | ref).sum((1, 2))
    assert iou.min() >= 0.999


def test_decoder_internals_match_official(predictor):
    """The stability rule that picks between token 0 and the best multimask token, and the object score."""
    state = predictor._state
    backend = predictor.backend
    for case, spec in CASES.items():
        expected = np.load(SAM2 / f"expected_image_truck_{case}.npz")
        points = torch.tensor(spec.get("points") or [], dtype=torch.float64).reshape(1, -1, 2)
        labels = torch.tensor(spec.get("labels") or [], dtype=torch.int32).reshape(1, -1)
        if "box" in spec:
            points = torch.tensor(spec["box"], dtype=torch.float64).reshape(1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int32)
        coords = backend.to_input_frame(points, state).float()
        sparse, dense = predictor.model.sam_prompt_encoder((coords, labels), None, None)
        decoder = predictor.model.sam_mask_decoder
        with torch.inference_mode():
            masks, iou, _, score = decoder._predict_masks(state["embedding"], state["dense_pe"], sparse, dense,
                                                          state["high_res"], None)
        np.testing.assert_allclose(iou[0].numpy(), expected["decoder_all_iou"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(score[0].numpy(), expected["decoder_object_score_logit"], atol=1e-4, rtol=0)
        token0 = masks[0, 0]
        stability = float((token0 > 0.05).sum() / (token0 > -0.05).sum())
        assert abs(stability - float(expected["decoder_token0_stability"][0])) <= 1e-3


def test_box_with_x1_before_x0_is_rejected(predictor):
    with pytest.raises(maskml.MaskmlError, match="x1 >= x0"):
        predictor.predict(box=[300, 10, 100, 50])


def test_segment_cli_with_a_sam2_model(tmp_path, predictor, sam2_checkpoint):
    from maskml.cli import main

    mask_path, logits_path = tmp_path / "m.png", tmp_path / "l.npy"
    assert main(["segment", str(TRUCK), "--model", "sam2.1_hiera_t", "--checkpoint", str(sam2_checkpoint),
                 "--point", "333.5,250.25", "--multimask", "--out", str(mask_path), "--logits", str(logits_path)]) == 0
    out = predictor.predict(points=[[333.5, 250.25]], labels=[1], multimask=True)
    np.testing.assert_array_equal(np.load(logits_path), out.logits.numpy())
    best = out.masks[int(out.scores.argmax())].numpy()
    np.testing.assert_array_equal(np.array(Image.open(mask_path)) > 0, best)


def test_automatic_masks_with_a_sam2_model(predictor):
    """Each record is one of the predictor's masks for its grid point (filters off, so masks survive)."""
    image = np.array(Image.open(TRUCK).convert("RGB"))
    generator = maskml.AutomaticMaskGenerator(predictor.model, points_per_side=2, pred_iou_thresh=0.0,
                                              stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = generator.generate(image)
    assert records and {"segmentation", "bbox", "area", "predicted_iou", "stability_score", "point_coords",
                        "crop_box"} <= set(records[0])
    predictor.set_image(image)
    for record in records:
        out = predictor.predict(points=record["point_coords"], labels=[1], multimask=True)
        k = int(np.argmin(np.abs(out.scores.numpy() - record["predicted_iou"])))
        assert abs(float(out.scores[k]) - record["predicted_iou"]) < 1e-5
        differ = out.masks[k].numpy() != record["segmentation"]  # batched decoding: float noise at |logit| ~1e-6
        assert differ.sum() <= 10 and (np.abs(out.logits[k].numpy()[differ]) < 1e-4).all()
        assert record["area"] == int(record["segmentation"].sum())
