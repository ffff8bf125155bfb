"""Segmentation data on disk -> (image, masks) tensors, in the layouts maskml reads.

    source = open_source("data/sa1b")            # layout detected, or layout="coco" ...
    image, masks = source.load(0)                # (H, W, 3) uint8, (N, H, W) bool, N >= 1

Layouts:
    sa1b   folder of image + JSON pairs (sa_1.jpg + sa_1.json), "annotations" with COCO RLE "segmentation"
    coco   a COCO instances JSON (annotations/instances_*.json under the folder, or the file itself):
           polygons (rasterised in torch: the pixels whose centre is inside), RLE and compressed RLE;
           crowd regions are left out
    masks  images/ + masks/ folders of pairs with the same stem; each mask a PNG, binary (one object) or
           indexed (palette index = object id)
    davis  JPEGImages/<video>/ + Annotations/<video>/ (indexed PNGs): each annotated frame is one sample

A sample found bad when loaded (missing or unreadable image, mask of another size, nothing annotated)
raises BadSample, naming the file; datasets skip or stop on it (see dataset.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from maskml.errors import MaskmlError
from maskml.io.images import read_image
from maskml.io.masks import read_mask
from maskml.io.rle import decode_rle

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class BadSample(MaskmlError):
    """One sample cannot be used; the message names its file."""


def _image_tensor(path: Path) -> torch.Tensor:
    try:
        return torch.from_numpy(read_image(path))
    except MaskmlError as exc:
        raise BadSample(str(exc)) from None


def _stack(masks: list[torch.Tensor], size: tuple[int, int], where: Path) -> torch.Tensor:
    """Non-empty masks of the image's size as (N, H, W) bool; BadSample when none or a size is wrong."""
    for mask in masks:
        if tuple(mask.shape) != size:
            raise BadSample(f"{where}: a mask is {mask.shape[0]} x {mask.shape[1]} but its image is "
                            f"{size[0]} x {size[1]}")
    masks = [m for m in masks if m.any()]
    if not masks:
        raise BadSample(f"{where}: no non-empty object mask")
    return torch.stack(masks)


class Source:
    """Samples of one dataset; `names[i]` names sample i's file in messages."""

    layout = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class SA1BSource(Source):
    layout = "sa1b"

    @staticmethod
    def detect(root: Path) -> bool:
        return any(j.with_suffix(s).is_file() for j in root.glob("*.json") for s in IMAGE_SUFFIXES)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.jsons = sorted(root.glob("*.json"))
        self.names = [str(j) for j in self.jsons]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.jsons[index]
        try:
            record = json.loads(path.read_text())
            file_name = record.get("image", {}).get("file_name")
            annotations = record["annotations"]
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise BadSample(f"{path}: not an SA-1B annotation file ({type(exc).__name__}: {exc})") from None
        image_path = path.with_name(file_name) if file_name else next(
            (path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).is_file()), path.with_suffix(".jpg"))
        image = _image_tensor(image_path)
        try:
            masks = [decode_rle(a["segmentation"]) for a in annotations]
        except (KeyError, TypeError, ValueError, MaskmlError) as exc:
            raise BadSample(f"{path}: unreadable segmentation ({exc})") from None
        return image, _stack(masks, tuple(image.shape[:2]), path)


def _polygons_to_mask(polygons: list[list[float]], h: int, w: int) -> torch.Tensor:
    """COCO polygons (flat x, y lists in pixel-edge coordinates: pixel (i, j) spans [j, j + 1] x [i, i + 1]) ->
    (h, w) bool: the pixels whose centre lies inside any of them (even-odd rule), tested within each bounding box."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    for polygon in polygons:
        points = torch.as_tensor(polygon, dtype=torch.float64).reshape(-1, 2)
        if len(points) < 3:
            continue
        x0, y0 = (points.amin(0).floor().clamp(min=0)).long().tolist()
        x1 = int(min(w, points[:, 0].max().ceil()))
        y1 = int(min(h, points[:, 1].max().ceil()))
        if x1 <= x0 or y1 <= y0:
            continue
        py = (torch.arange(y0, y1, dtype=torch.float64) + 0.5)[:, None]
        px = (torch.arange(x0, x1, dtype=torch.float64) + 0.5)[None, :]
        inside = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
        for (xa, ya), (xb, yb) in zip(points.tolist(), points.roll(-1, 0).tolist()):
            if ya == yb:
                continue  # a horizontal edge never crosses a pixel row's ray
            crosses = (ya > py) != (yb > py)
            x_cross = xa + (py - ya) * (xb - xa) / (yb - ya)
            inside ^= crosses & (px < x_cross)
        mask[y0:y1, x0:x1] |= inside
    return mask


def coco_segmentation_mask(segmentation, h: int, w: int) -> torch.Tensor:
    """A COCO "segmentation" (polygon list, RLE with list counts, compressed RLE) -> (h, w) bool."""
    if isinstance(segmentation, list):
        return _polygons_to_mask(segmentation, h, w)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return decode_rle(segmentation)
    raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")


class COCOSource(Source):
    layout = "coco"

    @staticmethod
    def annotation_file(root: Path) -> Path | None:
        if root.is_file() and root.suffix == ".json":
            return root
        candidates = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
        return candidates[0] if candidates else None

    @classmethod
    def detect(cls, root: Path) -> bool:
        return cls.annotation_file(root) is not None

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        path = self.annotation_file(root)
        try:
            data = json.loads(path.read_text())
            images = {im["id"]: im for im in data["images"]}
            annotations = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MaskmlError(f"{path} is not a COCO instances file ({type(exc).__name__}: {exc})") from None
        self.json_path = path
        per_image: dict = {}
        for a in annotations:
            if not a.get("iscrowd", 0):
                per_image.setdefault(a.get("image_id"), []).append(a)
        base = path.parent.parent if path.parent.name == "annotations" else path.parent
        split = path.stem.removeprefix("instances_")
        self.image_dirs = [d for d in (base / split, base / "images" / split, base / "images", base) if d.is_dir()]
        self.images = [images[i] for i in sorted(images) if i in per_image]
        self.unannotated = len(images) - len(self.images)  # images with no (non-crowd) object: not samples
        self.per_image = per_image
        self.names = [f"{path}: image {im['id']} ({im.get('file_name')})" for im in self.images]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        info = self.images[index]
        file_name = info.get("file_name", "")
        image_path = next((d / file_name for d in self.image_dirs if (d / file_name).is_file()),
                          (self.image_dirs[0] if self.image_dirs else self.root) / file_name)
        image = _image_tensor(image_path)
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise BadSample(f"{image_path} is {h} x {w} but {self.json_path} says {info['height']} x {info['width']}")
        try:
            masks = [coco_segmentation_mask(a["segmentation"], h, w) for a in self.per_image[info["id"]]]
        except (KeyError, TypeError, ValueError, MaskmlError) as exc:
            raise BadSample(f"{self.names[index]}: unreadable segmentation ({exc})") from None
        return image, _stack(masks, (h, w), image_path)


def _image_for(stem_dir: Path, stem: str) -> Path:
    return next((stem_dir / (stem + s) for s in IMAGE_SUFFIXES if (stem_dir / (stem + s)).is_file()),
                stem_dir / (stem + ".jpg"))


class _MaskPairSource(Source):
    """Samples that are mask PNGs (object ids), each with an image found by image_path()."""

    masks: list[Path]

    def image_path(self, mask_path: Path) -> Path:
        raise NotImplementedError

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask_path = self.masks[index]
        image = _image_tensor(self.image_path(mask_path))
        try:
            ids = torch.from_numpy(read_mask(mask_path))
        except MaskmlError as exc:
            raise BadSample(str(exc)) from None
        masks = [ids == k for k in torch.unique(ids).tolist() if k != 0]
        return image, _stack(masks, tuple(image.shape[:2]), mask_path)


class MaskFolderSource(_MaskPairSource):
    layout = "masks"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.masks = sorted((root / "masks").glob("*.png"))
        self.names = [str(m) for m in self.masks]

    def image_path(self, mask_path: Path) -> Path:
        return _image_for(self.root / "images", mask_path.stem)


class DavisSource(_MaskPairSource):
    layout = "davis"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        annotations = root / "Annotations"
        self.masks = sorted(p for video in sorted(annotations.iterdir()) if video.is_dir()
                            for p in video.glob("*.png"))
        self.names = [str(m) for m in self.masks]

    def image_path(self, mask_path: Path) -> Path:
        return _image_for(self.root / "JPEGImages" / mask_path.parent.name, mask_path.stem)


LAYOUTS: dict[str, tuple[type[Source], str]] = {
    "sa1b": (SA1BSource, "SA-1B: image + JSON pairs in one folder (sa_1.jpg + sa_1.json with RLE annotations)"),
    "coco": (COCOSource, "COCO: annotations/instances_*.json under the folder, or the JSON file itself"),
    "masks": (MaskFolderSource, "image + mask pairs: images/ and masks/ folders, files with the same stem"),
    "davis": (DavisSource, "DAVIS: JPEGImages/<video>/ and Annotations/<video>/ folders"),
}


def open_source(root: str | Path, layout: str = "auto") -> Source:
    """The dataset at `root` in `layout`, or in the first layout that fits (auto)."""
    root = Path(root)
    if not root.exists():
        raise MaskmlError(f"data path {root} does not exist")
    if layout != "auto":
        if layout not in LAYOUTS:
            raise MaskmlError(f"unknown data layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
        cls, description = LAYOUTS[layout]
        if not cls.detect(root):
            raise MaskmlError(f"{root} is not in the {layout} layout ({description})")
        source = cls(root)
    else:
        source = next((cls(root) for cls, _ in LAYOUTS.values() if cls.detect(root)), None)
        if source is None:
            tried = "; ".join(f"{name} ({description})" for name, (_, description) in LAYOUTS.items())
            inside = [f"{d} ({name})" for d in sorted(root.iterdir()) if d.is_dir()
                      for name, (cls, _) in LAYOUTS.items() if cls.detect(d)] if root.is_dir() else []
            hint = f" Folders inside that are: {', '.join(inside)}." if inside else ""
            raise MaskmlError(f"data folder {root} is in none of the known layouts. Tried: {tried}.{hint}")
    if len(source) == 0:
        raise MaskmlError(f"{root} ({source.layout} layout) holds no samples")
    return source
