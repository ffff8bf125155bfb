"""Reading and writing single images, and writing any output file atomically."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError
from maskml.io.outputs import atomic_paths


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB. PIL decodes, as the official pipelines do, so inputs are bit-identical."""
    path = Path(path)
    if not path.is_file():
        raise MaskmlError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
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


def save_image(path: str | Path, image: np.ndarray, fmt: str | None = None) -> None:
    """Write an array to `path` as is (no temporary name); the format follows the suffix unless given."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format=fmt or image_format(path))


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an H x W (gray or indexed) or H x W x 3 RGB uint8 array atomically; the format follows the suffix."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        save_image(tmp, image, fmt)
