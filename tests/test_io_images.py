"""Reading images: 8-bit files exactly as Pillow decodes them, 16-bit ones scaled to 8 bits, clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from maskml import MaskmlError
from maskml.io.images import read_image

# 16-bit samples and their 8-bit values, round(v / 257): where the high byte (what Pillow keeps of 16-bit
# colour) is not the nearest 8-bit value (51200 = 200 * 256 is nearer 199 * 257), and the rounding edges
SAMPLES = np.array([[0, 128, 129, 32896], [33024, 33025, 51200, 65535]], np.uint16)
EXPECTED = np.array([[0, 0, 1, 128], [128, 129, 199, 255]], np.uint8)


def test_eight_bit_images_are_decoded_by_pillow(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, axis=2))


def test_sixteen_bit_greyscale_written_by_pillow_and_opencv(tmp_path):
    Image.fromarray(SAMPLES).save(tmp_path / "pillow.png")
    cv2.imwrite(str(tmp_path / "opencv.png"), SAMPLES)
    for name in ("pillow.png", "opencv.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode.startswith("I;16"), name  # what Pillow's convert("RGB") made all white
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (2, 4, 3)
        np.testing.assert_array_equal(image, np.repeat(EXPECTED[..., None], 3, axis=2), err_msg=name)


def test_sixteen_bit_colour_written_by_opencv(tmp_path):
    rgb = np.stack([SAMPLES, SAMPLES[::-1], SAMPLES[:, ::-1]], axis=2)
    expected = np.stack([EXPECTED, EXPECTED[::-1], EXPECTED[:, ::-1]], axis=2)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([rgb[..., ::-1], np.full(SAMPLES.shape, 65535, np.uint16)]))
    cv2.imwrite(str(tmp_path / "rgb.tif"), rgb[..., ::-1])
    for name in ("rgb.png", "rgba.png", "rgb.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), expected, err_msg=name)


def test_32_bit_integer_images(tmp_path):
    Image.fromarray(SAMPLES.astype(np.int32)).save(tmp_path / "i.tif")  # Pillow's mode "I"
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif")[..., 0], EXPECTED)
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(MaskmlError, match=r"values from 0 to 70000, outside the 16-bit range 0..65535"):
        read_image(tmp_path / "wide.tif")
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(MaskmlError, match="floating-point samples: save it as an 8- or 16-bit image"):
        read_image(tmp_path / "float.tif")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MaskmlError, match="does not exist"):
        read_image(tmp_path / "none.png")
    with pytest.raises(MaskmlError, match=r"is a folder, not a file: give the file itself"):
        read_image(tmp_path)
