"""Reading and writing single images, and writing any output file atomically."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError
from maskml.io.outputs import atomic_paths


# Pillow's modes for one channel of more than 8 bits: a 16-bit greyscale PNG or TIFF opens as "I;16";
# older Pillows and 32-bit TIFFs give "I". Pillow's own convert("RGB") clips these to 255 (all white).
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def check_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a MaskmlError saying that it does not exist or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise MaskmlError(f"{what} {path} is a folder, not a file: give the file itself")
    if not path.is_file():
        raise MaskmlError(f"{what} {path} does not exist")
    return path


def wide_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """16-bit samples (0..65535) -> 0..255, round(value / 257): 65535 is 255, as 8-bit white."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise MaskmlError(f"image {path} holds values from {values.min()} to {values.max()}, outside the 16-bit range "
                          f"0..65535 that maskml scales to 8 bits: save it as an 8- or 16-bit image")
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round half up; v / 257 is never a half


def has_wide_colour(im: Image.Image) -> bool:
    """Whether the file stores 16-bit colour samples, which Pillow (no 16-bit colour mode) cuts to their high byte."""
    for tile in im.tile:
        args = tile[3]  # the decoder's arguments: the raw mode, alone or first
        rawmode = args if isinstance(args, str) else args[0] if args and isinstance(args[0], str) else ""
        if ";16" in rawmode:
            return True
    return False


def read_wide_colour(path: Path) -> np.ndarray:
    """A 16-bit colour PNG or TIFF with OpenCV, which keeps the 16 bits, scaled to H x W x 3 uint8 RGB."""
    import cv2

    data = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16:
        raise MaskmlError(f"cannot read image {path}: its 16-bit colour could not be decoded (save it with 8 bits)")
    if data.ndim == 2:
        data = data[..., None]
    channels = data.shape[2]
    rgb = np.repeat(data[..., :1], 3, axis=2) if channels <= 2 else data[..., 2::-1]  # grey(+alpha) or BGR(A)
    return wide_to_uint8(rgb, path)


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB. PIL decodes, as the official pipelines do, so 8-bit inputs are bit-identical;
    16-bit images (greyscale or colour PNG/TIFF) are scaled to 8 bits (round(value / 257)); an alpha
    channel is dropped."""
    path = check_file(path, "image")
    try:
        with Image.open(path) as im:
            if im.mode in WIDE_GREY_MODES:
                return np.repeat(wide_to_uint8(np.array(im), path)[..., None], 3, axis=2)
            if im.mode == "F":
                raise MaskmlError(f"image {path} holds 32-bit floating-point samples: save it as an 8- or 16-bit "
                                  f"image")
            if has_wide_colour(im):
                return read_wide_colour(path)
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MaskmlError(f"cannot read image {path}: {exc}") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it takes the final name only if the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def image_format(path: str | Path) -> str:
    """Pillow's format name for the suffix of `path` (.png -> PNG)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise MaskmlError(f"cannot tell the image format of {path} from its suffix (use .png or .jpg)")
    return fmt


def save_image(path: str | Path, image: np.ndarray, fmt: str | None = None, **options) -> None:
    """Write an array to `path` as is (no temporary name); the format follows the suffix unless given;
    `options` go to Pillow's save (e.g. quality=95 for JPEG)."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format=fmt or image_format(path), **options)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an H x W (gray or indexed) or H x W x 3 RGB uint8 array atomically; the format follows the suffix."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        save_image(tmp, image, fmt)
