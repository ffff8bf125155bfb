"""ImagePredictor API: input forms, batching, and one clear error per kind of bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import maskml
from maskml import MaskmlError


@pytest.fixture(scope="module")
def predictor(sam_checkpoints, truck_image):
    p = maskml.ImagePredictor(maskml.load_model("sam_vit_b", checkpoint=sam_checkpoints["sam_vit_b"]))
    p.set_image(truck_image)
    return p


def test_predict_before_set_image_is_an_error(sam_checkpoints):
    p = maskml.ImagePredictor(maskml.load_model("sam_vit_b", checkpoint=sam_checkpoints["sam_vit_b"]))
    with pytest.raises(MaskmlError, match="set_image"):
        p.predict(points=[[1, 1]])


def test_output_shapes_and_types(predictor):
    out = predictor.predict(points=[[430, 310]], labels=[1], multimask=True)
    assert out.masks.shape == (3, 800, 1200) and out.masks.dtype == torch.bool
    assert out.logits.shape == (3, 800, 1200) and out.logits.dtype == torch.float32
    assert out.low_res_logits.shape == (3, 256, 256) and out.scores.shape == (3,)
    assert torch.equal(out.masks, out.logits > 0)
    single = predictor.predict(points=[[430, 310]])  # labels default to foreground
    assert single.masks.shape == (1, 800, 1200)
    torch.testing.assert_close(single.logits, predictor.predict(points=[[430, 310]], labels=[1]).logits)


def test_low_res_logits_are_a_valid_mask_input(predictor):
    first = predictor.predict(points=[[430, 310]], multimask=True)
    again = predictor.predict(points=[[430, 310]], mask_input=first.low_res_logits[first.best()][None])
    assert again.masks.shape == (1, 800, 1200)
    assert not torch.equal(again.logits, predictor.predict(points=[[430, 310]]).logits)


def test_batched_boxes_equal_single_boxes(predictor):
    boxes = [[50, 180, 600, 700], [640, 100, 1150, 520]]
    batch = predictor.predict(boxes=boxes)
    assert batch.masks.shape == (2, 1, 800, 1200)
    for i, box in enumerate(boxes):
        one = predictor.predict(box=box)
        torch.testing.assert_close(batch.low_res_logits[i], one.low_res_logits, atol=1e-5, rtol=0)
    with_points = predictor.predict(boxes=boxes, points=[[[300, 400]], [[900, 300]]], labels=[[0], [1]])
    assert with_points.masks.shape == (2, 1, 800, 1200)


def test_tensor_and_array_images_agree(predictor, truck_image):
    embedding = predictor.get_image_embedding().clone()
    predictor.set_image(torch.from_numpy(truck_image))
    torch.testing.assert_close(predictor.get_image_embedding(), embedding, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(points=[1, 2, 3]), "points must have shape"),
    (dict(points=[[1, 2]], labels=[1, 0]), "1 points but 2 labels"),
    (dict(points=[[1, 2]], labels=[2]), "labels must be 1"),
    (dict(points=[[1, 2]], labels=["fg"]), r"point labels must be 1 \(object\) or 0 \(background\), got \['fg'\]"),
    (dict(points=[[1, 2]], mask_input=np.ones((1, 256, 256), bool)),
     "mask_input takes float mask logits .*, got a torch.bool array: to start from an object's mask, give its points"),
    (dict(labels=[1]), "labels given without points"),
    (dict(box=[10, 10, 5, 50]), "x1 >= x0"),
    (dict(box=[1, 2, 3]), "box must have shape"),
    (dict(box=[0, 0, 5, 5], boxes=[[0, 0, 5, 5]]), "not both"),
    (dict(points=[["a", 1]]), "must be numbers"),
    (dict(points=[[float("nan"), 1]]), "finite"),
    (dict(points=[[1, 2]], mask_input=np.zeros((64, 64))), "mask_input must be 1 x 256 x 256"),
])
def test_bad_prompts(predictor, kwargs, message):
    with pytest.raises(MaskmlError, match=message):
        predictor.predict(**kwargs)


@pytest.mark.parametrize("image,message", [
    (np.zeros((10, 10), np.uint8), "H x W x 3"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    ("truck.jpg", "array or tensor"),
])
def test_bad_images(predictor, image, message):
    with pytest.raises(MaskmlError, match=message):
        predictor.set_image(image)


def test_non_image_model_is_rejected():
    with pytest.raises(MaskmlError, match="not an image segmentation model"):
        maskml.ImagePredictor(torch.nn.Linear(2, 2))
