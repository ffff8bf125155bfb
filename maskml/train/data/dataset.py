"""Training and evaluation datasets over a Source: bad samples skipped (counted, with a warning naming the
file) or stopping the run, augmentation in torch, and each model family's own resize and padding.

Training items: {"image": (3, S, S) uint8 resized and padded as the model family does (SAM: longest side
to S, zeros bottom-right; SAM 2: a square resize), "masks": (N, S, S) bool, "valid_size": (h, w) of the
image inside the padding, "name": str}. Evaluation items keep the original image and masks.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from maskml.errors import MaskmlError
from maskml.predict.resize import longest_side_shape, resize_bilinear_like_pillow
from maskml.train.data.readers import BadSample, Source


class SkippingLoader:
    """source.load with the data.on_error policy: "skip" replaces a bad sample by the next good one
    (deterministically) and warns once per file; "stop" raises a MaskmlError naming the file."""

    def __init__(self, source: Source, on_error: str = "skip") -> None:
        if on_error not in ("skip", "stop"):
            raise MaskmlError(f"data.on_error must be skip or stop, got {on_error!r}")
        self.source = source
        self.on_error = on_error
        self.skipped: set[int] = set()

    def load(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        n = len(self.source)
        for step in range(n):
            i = (index + step) % n
            if i in self.skipped:
                continue
            try:
                image, masks = self.source.load(i)
                return i, image, masks
            except BadSample as exc:
                if self.on_error == "stop":
                    raise MaskmlError(f"bad sample: {exc} (set data.on_error=skip to skip such samples)") from None
                self.skipped.add(i)
                warnings.warn(f"skipping bad sample ({len(self.skipped)} so far): {exc}", stacklevel=2)
        raise MaskmlError(f"every sample of {self.source.root} is bad ({n} skipped); see the warnings above")


def family_resize(image: torch.Tensor, masks: torch.Tensor, family: str, size: int, shrink: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 + (N, H, W) bool -> the model's input frame: (3, size, size) uint8, (N, size, size) bool,
    valid (h, w). SAM: longest side to size * shrink (Pillow-exact bilinear, as maskml's predictor), zeros
    bottom-right; SAM 2: the float antialiased square resize of its predictor, rounded to uint8."""
    h, w = image.shape[:2]
    if family == "sam":
        valid = longest_side_shape(h, w, max(16, round(size * shrink)))
        resized = resize_bilinear_like_pillow(image, valid) if valid != (h, w) else image
        resized = resized.permute(2, 0, 1)
    else:
        valid = (size, size)
        x = image.permute(2, 0, 1)[None].float()
        resized = F.interpolate(x, valid, mode="bilinear", align_corners=False, antialias=True)[0]
        resized = resized.round().clamp(0, 255).to(torch.uint8)
    mask_frame = F.interpolate(masks[None].float(), valid, mode="bilinear", align_corners=False)[0] > 0.5
    out_image = image.new_zeros(3, size, size)
    out_image[:, :valid[0], :valid[1]] = resized
    out_masks = masks.new_zeros(masks.shape[0], size, size)
    out_masks[:, :valid[0], :valid[1]] = mask_frame
    return out_image, out_masks, valid


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def augment(image: torch.Tensor, masks: torch.Tensor, g: torch.Generator, flip: float, scale: tuple[float, float],
            colour: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Flip, zoom-in crop and colour jitter of (H, W, 3) uint8 + (N, H, W) bool; returns the shrink factor for
    zooming out (a scale below 1, applied by the resize: the padding grows)."""
    if float(torch.rand((), generator=g)) < flip:
        image, masks = image.flip(1), masks.flip(2)
    s = math.exp(_uniform(g, math.log(scale[0]), math.log(scale[1])))
    if s > 1:
        h, w = image.shape[:2]
        ch, cw = max(1, round(h / s)), max(1, round(w / s))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
        crop_masks = masks[:, y0:y0 + ch, x0:x0 + cw]
        if crop_masks.flatten(1).any(1).any():  # keep the full image when the crop holds no object
            image, masks = image[y0:y0 + ch, x0:x0 + cw], crop_masks
    if colour > 0:
        x = image.float()
        brightness, contrast, saturation = (_uniform(g, 1 - colour, 1 + colour) for _ in range(3))
        x = x * brightness
        x = (x - x.mean()) * contrast + x.mean()
        gray = x.mean(dim=2, keepdim=True)
        x = (x - gray) * saturation + gray
        image = x.round().clamp(0, 255).to(torch.uint8)
    return image, masks, min(s, 1.0)


class TrainDataset(Dataset):
    """Augmented items in the model's input frame; `sample(index, seed)` draws the augmentation from `seed`."""

    def __init__(self, source: Source, family: str, image_size: int, on_error: str = "skip", flip: float = 0.5,
                 scale: tuple[float, float] = (1.0, 1.0), colour: float = 0.0, min_pixels: int = 4) -> None:
        self.loader = SkippingLoader(source, on_error)
        self.family, self.image_size = family, image_size
        self.flip, self.scale, self.colour = flip, tuple(scale), colour
        self.min_pixels = min_pixels

    def __len__(self) -> int:
        return len(self.loader.source)

    def sample(self, index: int, seed: int) -> dict:
        i, image, masks = self.loader.load(index)
        g = torch.Generator().manual_seed(seed)
        image, masks, shrink = augment(image, masks, g, self.flip, self.scale, self.colour)
        image, masks, valid = family_resize(image, masks, self.family, self.image_size, shrink)
        keep = masks.flatten(1).sum(1) >= self.min_pixels
        if not keep.any():  # every object shrank to a few pixels: keep the largest
            keep = masks.flatten(1).sum(1) == masks.flatten(1).sum(1).max()
        return {"image": image, "masks": masks[keep], "valid_size": valid, "name": self.loader.source.names[i],
                "seed": seed}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, index)


class EvalDataset(Dataset):
    """Original images and masks: {"image": (H, W, 3) uint8, "masks": (N, H, W) bool, "name": str}."""

    def __init__(self, source: Source, on_error: str = "skip", max_images: int | None = None) -> None:
        self.loader = SkippingLoader(source, on_error)
        self.length = len(source) if max_images is None else min(len(source), max_images)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        i, image, masks = self.loader.load(index)
        return {"image": image, "masks": masks, "name": self.loader.source.names[i]}


def datasets_from_config(data, family: str, image_size: int) -> tuple[TrainDataset, EvalDataset | None]:
    """The training dataset and the held-out one (None without data.val_root) of a `data` config group."""
    from omegaconf import OmegaConf

    from maskml.train.data.readers import open_source

    train = TrainDataset(open_source(data.root, data.layout), family, image_size, on_error=data.on_error,
                         flip=data.augment.flip, scale=tuple(data.augment.scale), colour=data.augment.colour)
    if OmegaConf.select(data, "val_root") is None:
        return train, None
    return train, EvalDataset(open_source(data.val_root, data.layout), on_error=data.on_error,
                              max_images=OmegaConf.select(data, "val_max_images"))
