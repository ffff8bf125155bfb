"""Object-id masks as DAVIS-style indexed PNGs: palette index = object id, 0 = background.

The palette written is the one of DAVIS, Cutie and PASCAL VOC (1 dark red, 2 green,
3 olive, 4 navy, ...); any palette is accepted when reading, as only the index counts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskml.errors import MaskmlError
from maskml.io.draw import palette_color
from maskml.io.images import WIDE_GREY_MODES, atomic_path, check_file

DAVIS_PALETTE = [c for index in range(256) for c in palette_color(index)]  # flat: r0, g0, b0, r1, ...


def read_mask(path: str | Path) -> np.ndarray:
    """H x W uint8 object ids. Indexed PNG: the palette index is the id, whatever the palette.
    8-bit grayscale (e.g. 0/255) or black-and-white: nonzero is object 1. 16-bit grayscale: a label
    map, each value an object id (1 to 255), but for a binary mask (one nonzero value, e.g.
    0/65535), which is object 1. RGB: colours of the DAVIS palette map to their index."""
    path = check_file(path, "mask")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                return np.array(im)
            if mode in WIDE_GREY_MODES:
                return wide_ids(np.array(im), path)
            if mode in ("1", "L", "LA"):
                return (np.array(im.convert("L")) > 0).astype(np.uint8)
            rgb = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MaskmlError(f"cannot read mask {path}: {exc}") from None
    codes = rgb.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    palette = np.array(DAVIS_PALETTE, np.int64).reshape(256, 3) @ np.array([1 << 16, 1 << 8, 1])
    lookup = {int(code): index for index, code in enumerate(palette)}
    ids = np.zeros(codes.shape, np.uint8)
    for code in np.unique(codes):
        if int(code) not in lookup:
            r, g, b = int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255
            raise MaskmlError(f"mask {path} is an RGB image with colour ({r}, {g}, {b}), which is not a DAVIS "
                              f"palette colour: save masks as indexed PNGs (palette index = object id)")
        ids[codes == code] = lookup[int(code)]
    return ids


def wide_ids(values: np.ndarray, path: Path) -> np.ndarray:
    """A 16-bit (or 32-bit) grayscale mask -> uint8 ids: the values themselves, not scaled as image
    brightness is; one nonzero value is a binary mask at that bit depth, object 1."""
    present = np.unique(values)
    nonzero = present[present != 0]
    if len(nonzero) == 1:
        return (values != 0).astype(np.uint8)
    if len(nonzero) and (nonzero.min() < 0 or nonzero.max() > 255):
        raise MaskmlError(f"mask {path} is a grayscale label map with values from {nonzero.min()} to {nonzero.max()}, "
                          f"but object ids go from 1 to 255: number its objects 1, 2, 3, ... (or save it as an "
                          f"indexed PNG, palette index = object id)")
    return values.astype(np.uint8)


def save_mask(path: str | Path, ids: np.ndarray) -> None:
    """Write H x W object ids (0..255) as an indexed PNG with the DAVIS palette, under its name
    directly (write_mask writes through a temporary name)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise MaskmlError(f"a mask must be H x W object ids, got an array of shape {ids.shape}")
    if ids.dtype.kind not in "biu":
        raise MaskmlError(f"object ids must be integers (or booleans), got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise MaskmlError(f"object ids must be 0..255 to fit an indexed PNG, got {ids.min()}..{ids.max()}")
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE)  # turns the L image into a P image with these indices
    image.save(path, format="PNG")


def write_mask(path: str | Path, ids: np.ndarray) -> None:
    """save_mask through a temporary name: the file appears only when complete."""
    with atomic_path(path) as tmp:
        save_mask(tmp, ids)
