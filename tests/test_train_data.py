"""Training data readers (SA-1B, COCO, image + mask folders, DAVIS), layout detection, bad samples, and the
training transforms (augmentation, each family's resize and padding)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maskml.errors import MaskmlError
from maskml.io.images import write_image
from maskml.io.masks import write_mask
from maskml.io.rle import compress_rle, encode_rle
from maskml.predict.resize import resize_bilinear_like_pillow
from maskml.train.data.dataset import EvalDataset, TrainDataset, family_resize
from maskml.train.data.readers import COCOSource, open_source


def _image(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square(h, w, y0, y1, x0, x1) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _sa1b(folder, stem, image, masks, compressed=True):
    write_image(folder / f"{stem}.jpg" if image is not None else folder / "unused.jpg", image if image is not None
                else _image())
    rles = encode_rle(torch.stack(masks)) if masks else []
    annotations = [{"segmentation": compress_rle(r) if compressed else r} for r in rles]
    (folder / f"{stem}.json").write_text(json.dumps({"image": {"file_name": f"{stem}.jpg"},
                                                     "annotations": annotations}))


def test_sa1b_reader_decodes_rle_masks(tmp_path):
    image = _image()
    masks = [_square(24, 32, 2, 10, 3, 9), _square(24, 32, 12, 20, 10, 30)]
    _sa1b(tmp_path, "sa_1", image, masks)
    _sa1b(tmp_path, "sa_2", _image(seed=1), masks[:1], compressed=False)
    source = open_source(tmp_path)
    assert source.layout == "sa1b" and len(source) == 2
    got_image, got_masks = source.load(0)
    assert got_image.shape == (24, 32, 3) and got_image.dtype == torch.uint8
    assert torch.equal(got_masks, torch.stack(masks))
    assert torch.equal(source.load(1)[1], masks[0][None])


def test_coco_reader_polygons_and_rle(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    write_image(tmp_path / "val2017" / "a.png", _image(20, 30))
    write_image(tmp_path / "val2017" / "b.png", _image(20, 30, seed=2))
    rle_mask = _square(20, 30, 5, 15, 20, 28)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                       {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
                       {"id": 3, "file_name": "c.png", "height": 20, "width": 30}],  # no annotation: not a sample
            "annotations": [
                # a rectangle with corners on pixel edges: pixels x 2..5, y 1..3 (12 pixels, as its area)
                {"id": 10, "image_id": 1, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]], "iscrowd": 0},
                {"id": 11, "image_id": 1, "segmentation": compress_rle(encode_rle(rle_mask)[0]), "iscrowd": 0},
                {"id": 12, "image_id": 2, "segmentation": encode_rle(rle_mask)[0], "iscrowd": 0},
                {"id": 13, "image_id": 2, "segmentation": encode_rle(~rle_mask)[0], "iscrowd": 1},  # crowd: left out
            ],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    source = open_source(tmp_path)
    assert isinstance(source, COCOSource) and len(source) == 2 and source.unannotated == 1
    image, masks = source.load(0)
    assert image.shape == (20, 30, 3)
    assert torch.equal(masks[0], _square(20, 30, 1, 4, 2, 6))
    assert torch.equal(masks[1], rle_mask)
    assert torch.equal(source.load(1)[1], rle_mask[None])
    assert len(open_source(tmp_path / "annotations" / "instances_val2017.json", "coco")) == 2  # the file itself


def test_mask_folder_reader_binary_and_indexed(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images" / "one.jpg", _image())
    write_image(tmp_path / "images" / "two.png", _image(seed=3))
    binary = np.zeros((24, 32), np.uint8)
    binary[4:9, 5:12] = 255
    Image.fromarray(binary).save(tmp_path / "masks" / "one.png")  # grayscale 0/255: one object
    ids = np.zeros((24, 32), np.uint8)
    ids[1:5, 1:5], ids[10:20, 10:20] = 1, 3
    write_mask(tmp_path / "masks" / "two.png", ids)  # indexed: objects 1 and 3
    source = open_source(tmp_path)
    assert source.layout == "masks"
    assert torch.equal(source.load(0)[1], torch.from_numpy(binary > 0)[None])
    masks = source.load(1)[1]
    assert masks.shape == (2, 24, 32)
    assert torch.equal(masks[1], torch.from_numpy(ids == 3))


def test_davis_reader_takes_annotated_frames(tmp_path):
    for video in ("a", "b"):
        (tmp_path / "JPEGImages" / video).mkdir(parents=True)
        (tmp_path / "Annotations" / video).mkdir(parents=True)
        for t in range(2):
            write_image(tmp_path / "JPEGImages" / video / f"{t:05d}.jpg", _image(seed=t))
            ids = np.zeros((24, 32), np.uint8)
            ids[t:t + 5, 2:8] = 2
            write_mask(tmp_path / "Annotations" / video / f"{t:05d}.png", ids)
    source = open_source(tmp_path)
    assert source.layout == "davis" and len(source) == 4
    assert source.load(3)[1].shape == (1, 24, 32)


def test_unknown_layout_lists_the_layouts_tried_and_folders_inside(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    inner = tmp_path / "inner"
    inner.mkdir()
    _sa1b(inner, "sa_1", _image(), [_square(24, 32, 2, 10, 3, 9)])
    with pytest.raises(MaskmlError) as err:
        open_source(tmp_path)
    message = str(err.value)
    for layout in ("sa1b", "coco", "masks", "davis"):
        assert layout in message
    assert "inner (sa1b)" in message
    with pytest.raises(MaskmlError, match="not in the coco layout"):
        open_source(inner, "coco")
    with pytest.raises(MaskmlError, match="does not exist"):
        open_source(tmp_path / "missing")


def _bad_dataset(tmp_path):
    """Five SA-1B samples: good, missing image, corrupt image, mask of the wrong size, nothing annotated."""
    good = [_square(24, 32, 2, 10, 3, 9)]
    _sa1b(tmp_path, "sa_0", _image(), good)
    _sa1b(tmp_path, "sa_1", _image(), good)
    (tmp_path / "sa_1.jpg").unlink()
    _sa1b(tmp_path, "sa_2", _image(), good)
    (tmp_path / "sa_2.jpg").write_bytes(b"not a jpeg")
    _sa1b(tmp_path, "sa_3", _image(), [_square(12, 32, 2, 10, 3, 9)])
    _sa1b(tmp_path, "sa_4", _image(), [])
    return open_source(tmp_path)


def test_bad_samples_are_skipped_with_a_warning_naming_the_file(tmp_path):
    source = _bad_dataset(tmp_path)
    dataset = TrainDataset(source, "sam", 64, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [dataset.sample(i, seed=i)["name"] for i in range(5)]
    assert names == [str(tmp_path / "sa_0.json")] * 5  # each bad sample replaced by the next good one
    assert dataset.loader.skipped == {1, 2, 3, 4}
    text = "\n".join(str(w.message) for w in caught)
    for reason in ("sa_1.jpg does not exist", "cannot read image", "a mask is 12 x 32 but its image is 24 x 32",
                   "sa_4.json: no non-empty object mask"):
        assert reason in text


def test_bad_sample_stops_the_run_when_configured(tmp_path):
    dataset = EvalDataset(_bad_dataset(tmp_path), on_error="stop")
    assert dataset[0]["masks"].shape == (1, 24, 32)
    with pytest.raises(MaskmlError, match=r"sa_1\.jpg does not exist.*data.on_error=skip"):
        dataset[1]


def test_all_bad_is_an_error(tmp_path):
    _sa1b(tmp_path, "sa_4", _image(), [])
    with pytest.raises(MaskmlError, match="every sample"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EvalDataset(open_source(tmp_path))[0]


def test_sam_resize_is_the_predictors_and_pads_bottom_right():
    image = torch.from_numpy(_image(30, 40))
    masks = _square(30, 40, 0, 30, 0, 20)[None]
    out, out_masks, valid = family_resize(image, masks, "sam", 64)
    assert valid == (48, 64) and out.shape == (3, 64, 64) and out_masks.shape == (1, 64, 64)
    assert torch.equal(out[:, :48].permute(1, 2, 0), resize_bilinear_like_pillow(image, (48, 64)))
    assert not out[:, 48:].any() and not out_masks[:, 48:].any()
    assert out_masks[0, :48, :32].all() and not out_masks[0, :, 32:].any()


def test_sam2_resize_is_square():
    image = torch.from_numpy(_image(30, 40))
    out, out_masks, valid = family_resize(image, _square(30, 40, 0, 15, 0, 40)[None], "sam2", 64)
    assert valid == (64, 64) and out.shape == (3, 64, 64)
    assert out_masks[0, :32].all() and not out_masks[0, 32:].any()


def test_augmentation_is_deterministic_per_seed_and_keeps_masks_aligned(tmp_path):
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 8:40] = 255  # the object is the white rectangle
    _sa1b(tmp_path, "sa_0", image, [_square(48, 64, 10, 30, 8, 40)])
    write_image(tmp_path / "sa_0.jpg", image)
    source = open_source(tmp_path)
    dataset = TrainDataset(source, "sam", 64, flip=0.5, scale=(0.7, 1.5), colour=0.0)
    a, b = dataset.sample(0, seed=5), dataset.sample(0, seed=5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    flips = set()
    for seed in range(12):
        item = dataset.sample(0, seed)
        h, w = item["valid_size"]
        assert max(h, w) <= 64
        bright = item["image"].float().mean(0) > 127
        inside = item["masks"][0]
        # mask and image moved together: the mask covers white pixels (JPEG edges aside)
        assert bright[inside].float().mean() > 0.9
        flips.add(bool(inside[:, : w // 2].sum() < inside[:, w // 2:w].sum()))
    assert flips == {True, False}  # both orientations occur
