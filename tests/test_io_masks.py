"""Indexed-PNG object-id masks: the DAVIS palette, reading every kind of mask, atomic writes; masks drawn."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from maskml import MaskmlError
from maskml.io.draw import draw_masks, palette_color
from maskml.io.masks import DAVIS_PALETTE, read_mask, save_mask, write_mask

JUDO_MASK = Path(__file__).parents[1] / "examples" / "judo_masks" / "00000.png"
BIKE_MASK = Path(__file__).parent / "fixtures" / "cutie" / "inputs" / "masks" / "bike" / "00000.png"


def two_objects():
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 3:9] = 1
    ids[10:15, 20:28] = 7
    return ids


def test_davis_palette():
    # the PASCAL VOC / DAVIS colour map: 1 dark red, 2 green, 3 olive, 4 navy, ..., 255 near white
    colours = np.array(DAVIS_PALETTE).reshape(256, 3)
    assert colours[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert colours[8].tolist() == [64, 0, 0] and colours[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in colours.tolist()}) == 256
    with Image.open(JUDO_MASK) as im:  # a mask from the Cutie examples
        assert im.mode == "P" and im.getpalette() == DAVIS_PALETTE


def test_real_masks():
    ids = read_mask(JUDO_MASK)
    assert ids.dtype == np.uint8 and ids.shape == (480, 854) and set(np.unique(ids)) == {0, 1}
    bike = read_mask(BIKE_MASK)  # its palette differs from DAVIS's past entry 8
    assert bike.shape == (360, 640) and set(np.unique(bike)) == {0, 1, 2}


def test_write_read_round_trip(tmp_path):
    ids = two_objects()
    write_mask(tmp_path / "m.png", ids)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P" and image.getpalette() == DAVIS_PALETTE
        np.testing.assert_array_equal(np.array(image), ids)  # what other tools read: the indices
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)
    write_mask(tmp_path / "b.png", ids > 0)  # booleans are one object
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), (ids > 0).astype(np.uint8))
    save_mask(tmp_path / "wide.png", np.full((3, 4), 255, np.int64))
    assert read_mask(tmp_path / "wide.png").tolist() == [[255] * 4] * 3


def test_any_palette_gray_and_binary_masks(tmp_path):
    ids = two_objects()
    other = Image.fromarray(ids)
    other.putpalette([255 - c for c in DAVIS_PALETTE])
    other.save(tmp_path / "other.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "other.png"), ids)  # the index is the id, whatever the palette

    one = (ids > 0).astype(np.uint8)
    Image.fromarray(one * 255).save(tmp_path / "gray.png")  # 0/255 grayscale
    Image.fromarray(ids > 0).save(tmp_path / "binary.png")  # mode "1"
    Image.fromarray(one.astype(np.uint16) * 40000).save(tmp_path / "gray16.png")  # 16-bit
    Image.fromarray(np.stack([one * 200, np.full_like(one, 255)], -1)).save(tmp_path / "la.png")
    for name in ("gray.png", "binary.png", "gray16.png", "la.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.uint8, name
        np.testing.assert_array_equal(mask, one, err_msg=name)


def test_sixteen_bit_label_maps_keep_their_ids(tmp_path):
    ids = two_objects()
    ids[0, :3] = (2, 3, 255)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "pillow.png")
    cv2.imwrite(str(tmp_path / "opencv.png"), ids.astype(np.uint16))
    for name in ("pillow.png", "opencv.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode.startswith("I;16"), name
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.uint8, name
        np.testing.assert_array_equal(mask, ids, err_msg=name)  # values, not scaled as brightness (7 is not 0)
    cv2.imwrite(str(tmp_path / "binary.png"), (ids > 0).astype(np.uint16) * 65535)  # one value: a binary mask
    np.testing.assert_array_equal(read_mask(tmp_path / "binary.png"), ids > 0)
    cv2.imwrite(str(tmp_path / "instances.png"), np.array([[0, 1, 26001]], np.uint16))
    with pytest.raises(MaskmlError, match=r"instances.png is a grayscale label map with values from 1 to 26001, but "
                                          r"object ids go from 1 to 255"):
        read_mask(tmp_path / "instances.png")
    with pytest.raises(MaskmlError, match="is a folder, not a file"):
        read_mask(tmp_path)


def test_rgb_masks_map_davis_colours_to_ids(tmp_path):
    ids = two_objects()
    rgb = np.array(DAVIS_PALETTE, np.uint8).reshape(256, 3)[ids]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), ids)
    Image.fromarray(np.dstack([rgb, np.full(ids.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), ids)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(MaskmlError, match=r"odd.png is an RGB image with colour \(1, 2, 3\).*indexed PNGs"):
        read_mask(tmp_path / "odd.png")


def test_bad_masks(tmp_path):
    with pytest.raises(MaskmlError, match="does not exist"):
        read_mask(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(MaskmlError, match="cannot read mask"):
        read_mask(tmp_path / "junk.png")
    with pytest.raises(MaskmlError, match="0..255"):
        write_mask(tmp_path / "big.png", np.full((2, 2), 300))
    with pytest.raises(MaskmlError, match="0..255"):
        write_mask(tmp_path / "neg.png", np.full((2, 2), -1))
    with pytest.raises(MaskmlError, match="H x W"):
        write_mask(tmp_path / "3d.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(MaskmlError, match="integers"):
        write_mask(tmp_path / "float.png", np.zeros((2, 2), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.png"]  # no output, no temporary file


def test_failed_write_keeps_the_earlier_file(tmp_path):
    write_mask(tmp_path / "m.png", two_objects())
    before = (tmp_path / "m.png").read_bytes()
    with pytest.raises(MaskmlError):
        write_mask(tmp_path / "m.png", np.full((2, 2), 999))
    assert (tmp_path / "m.png").read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_draw_masks_tints_and_outlines_in_palette_colours():
    frame = np.full((40, 60, 3), 100, np.uint8)
    ids = np.zeros((40, 60), np.uint8)
    ids[10:30, 10:30] = 1
    ids[5:35, 40:55] = 2
    out = draw_masks(frame, ids, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(frame, np.full((40, 60, 3), 100, np.uint8))  # the input is not drawn on
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(out[20, 20], [114, 50, 50])  # inside: half frame, half (128, 0, 0)
    np.testing.assert_array_equal(out[20, 47], [50, 114, 50])  # object 2, (0, 128, 0)
    np.testing.assert_array_equal(out[20, 10], palette_color(1))  # the outline, in full colour
    np.testing.assert_array_equal(out[5, 47], palette_color(2))
