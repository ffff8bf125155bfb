"""Reading and writing single images, and writing any output file atomically."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError

_UMASK = os.umask(0)
os.umask(_UMASK)


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
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Like atomic_path for several outputs: all take their final names only if every write succeeded."""
    temps = []
    try:
        for path in paths:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
            temps.append(Path(tmp))
        yield temps
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


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
