"""Automatic mask generation: parity with the official generator, and its building blocks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES, unpack_masks
from maskml.io.rle import decode_rle
from maskml.ops.boxes import masks_to_boxes, nms
from maskml.predict import automatic
from maskml.predict.automatic import (
    UPSCALED_PIXELS_AT_ONCE,
    crop_boxes,
    point_grid,
    remove_small_regions,
    stability_score,
)

SAM = FIXTURES / "sam"
CASES = {c["name"]: c for c in json.loads((SAM / "cases.json").read_text())["cases"]}


@pytest.fixture(scope="module")
def mobile_sam(sam_checkpoints):
    return maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"])


@pytest.mark.parametrize("case", ["vit_t_a1_amg_pps8_nms_off", "vit_t_a2_amg_pps8_default_nms"])
def test_matches_official_generator(mobile_sam, truck_image, case):
    spec = CASES[case]
    expected = np.load(SAM / spec["expected"])
    records = maskml.AutomaticMaskGenerator(mobile_sam, **spec["options"]).generate(truck_image)
    assert len(records) == int(expected["n_masks"])
    np.testing.assert_array_equal([r["bbox"] for r in records], expected["bbox"])
    np.testing.assert_array_equal([r["point_coords"][0] for r in records], expected["point_coords"])
    np.testing.assert_array_equal([r["crop_box"] for r in records], expected["crop_box"])
    np.testing.assert_allclose([r["predicted_iou"] for r in records], expected["predicted_iou"], rtol=0, atol=5e-6)
    np.testing.assert_allclose([r["stability_score"] for r in records], expected["stability_score"], rtol=0, atol=2e-5)
    masks = np.stack([r["segmentation"] for r in records])
    official = unpack_masks(expected)
    iou = (masks & official).sum((1, 2)) / (masks | official).sum((1, 2))
    assert iou.min() >= 0.9999
    np.testing.assert_allclose([r["area"] for r in records], expected["area"], rtol=2e-5, atol=0)
    assert [r["area"] for r in records] == [int(m.sum()) for m in masks]


def test_coco_rle_output_and_crop_layers(mobile_sam, truck_image):
    small = truck_image[::4, ::4].copy()  # 300 x 200: fast, still two crop layers
    generator = maskml.AutomaticMaskGenerator(mobile_sam, points_per_side=4, pred_iou_thresh=0.0,
                                              stability_score_thresh=0.0, crop_n_layers=1, output_mode="coco_rle",
                                              min_mask_region_area=50)
    records = generator.generate(small)
    assert records
    crops = {tuple(r["crop_box"]) for r in records}
    assert crops <= {tuple(b[:2]) + (b[2] - b[0], b[3] - b[1]) for b, _ in crop_boxes(200, 300, 1, 512 / 1500)}
    for r in records:
        assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [200, 300]
        mask = decode_rle(r["segmentation"])
        assert r["area"] == int(mask.sum())
        x, y, w, h = r["bbox"]
        if r["area"]:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())
    json.dumps(records)  # serialisable as is


@pytest.mark.parametrize("n", range(1, 101))
def test_point_grid_is_bit_identical_to_official(n):
    # the official build_point_grid: numpy.linspace over the cell centres, tiled row by row
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    official = np.stack([np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))], axis=-1).reshape(-1, 2)
    grid = point_grid(n)
    assert grid.dtype == torch.float64
    np.testing.assert_array_equal(grid.numpy(), official, strict=True)


def test_point_grid_and_crop_boxes():
    grid = point_grid(4)
    np.testing.assert_array_equal(grid[:5].numpy(), [[0.125, 0.125], [0.375, 0.125], [0.625, 0.125],
                                                     [0.875, 0.125], [0.125, 0.375]])
    boxes = crop_boxes(800, 1200, 2, 512 / 1500)
    assert boxes[0] == ([0, 0, 1200, 800], 0)
    # layer 1: overlap = int(512/1500 * 800 * 2/2) = 273, crop = ceil((273 + 1200) / 2) = 737 x ceil(1073/2) = 537
    assert [b for b, layer in boxes if layer == 1] == [[0, 0, 737, 537], [0, 264, 737, 800], [464, 0, 1200, 537],
                                                       [464, 264, 1200, 800]]
    assert sum(layer == 2 for _, layer in boxes) == 16


def test_stability_score_by_hand():
    logits = torch.tensor([[[2.0, 0.5, -0.5, -2.0]]])
    # above +1: one pixel; above -1: three pixels
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)
    assert stability_score(logits, 0.0, 0.25).item() == pytest.approx(2 / 2)


def test_nms_is_strict_and_stable():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1])
    # box 2 has IoU exactly 0.5 with box 1: suppressed only when the threshold is below 0.5
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.49).tolist() == [1, 3]
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 0, 3]  # nothing suppressed, descending, ties in input order


def test_masks_to_boxes_inclusive_and_empty():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert masks_to_boxes(masks).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]


def test_remove_small_regions():
    mask = np.zeros((10, 10), bool)
    mask[1:9, 1:9] = True
    mask[4, 4] = False  # a one-pixel hole
    mask[0, 9] = True  # diagonal to (1, 8): the same region under 8-connectivity
    filled, changed = remove_small_regions(mask, 2, "holes")
    assert changed and filled[4, 4]
    unchanged, changed = remove_small_regions(filled, 2, "islands")
    assert not changed and unchanged is filled
    island = np.zeros((10, 10), bool)
    island[0, 0] = True
    island[5:9, 5:9] = True
    cleaned, changed = remove_small_regions(island, 2, "islands")
    assert changed and not cleaned[0, 0] and cleaned[5:9, 5:9].all() and cleaned.sum() == 16



def test_upscaling_a_few_masks_at_a_time_changes_nothing(mobile_sam, truck_image, monkeypatch):
    # by default the 192 masks of a 64-point batch are upscaled a few at a time; with an unbounded budget
    # all at once (what the official generator does, at gigabytes): the records must be the very same
    options = dict(CASES["vit_t_a2_amg_pps8_default_nms"]["options"], output_mode="uncompressed_rle")
    assert UPSCALED_PIXELS_AT_ONCE // (800 * 1200 + 1024 ** 2) < 3 * 64
    in_chunks = maskml.AutomaticMaskGenerator(mobile_sam, **options).generate(truck_image)
    monkeypatch.setattr(automatic, "UPSCALED_PIXELS_AT_ONCE", 2 ** 40)
    all_at_once = maskml.AutomaticMaskGenerator(mobile_sam, **options).generate(truck_image)
    assert in_chunks and in_chunks == all_at_once


@pytest.mark.parametrize("options, message", [
    ({"points_per_side": 0}, "points_per_side and crop_n_points_downscale_factor must be at least 1"),
    ({"points_per_batch": 0}, "points_per_batch must be at least 1"),
    ({"points_per_side": 2, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
     "points_per_side 2 leaves no point on crop layer 2"),
])
def test_settings_that_leave_no_points_are_one_clear_error(mobile_sam, options, message):
    with pytest.raises(maskml.MaskmlError, match=message):
        maskml.AutomaticMaskGenerator(mobile_sam, **options)
