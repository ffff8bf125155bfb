"""Static pseudo-videos: an image with masks -> a short clip, as Cutie's first training stage makes them
(cutie/dataset/static_dataset.py, with its values).

For the whole clip: a zoom (0.5 to 2x), a horizontal flip (half of the time), colour jitter (brightness
0.1, contrast 0.05, saturation 0.05, hue 0.05) and grey with probability 0.05. For each frame: a random
affine map (rotation 20 degrees, zoom 0.5 to 2x, shear 10), the shorter side resized to `size`, a random
size x size crop, colour jitter (0.1, 0.05, 0.05) and, one frame in three, a thin-plate-spline elastic
warp (12 control points moved by N(0, 0.02) of the side). All of it is one grid_sample per frame.

    clips = PseudoVideos(open_source("data/synth/images"), num_frames=3, max_objects=1, size=384)
    item = clips.sample(index, seed)     # the items of maskml.train.data.video.VideoClips

An item pastes objects of several images, as the official stage does: besides its own image,
randint(max_objects) other random images (none when max_objects is 1) each make a pseudo-clip (with their own
deformations); each clip gives one object visible in its first frame (at random), and each pasted object's
pixels (its hard mask) cover the clip so far, taking them from the objects under it. obj_ids number the
objects in paste order (1 = the item's own image); an object covered in the first frame is left out. The
name is the images' names joined by "+". Bad images are skipped or stop the run as the engine's image
datasets do (data.on_error).
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from maskml.errors import MaskmlError
from maskml.train.data.dataset import SkippingLoader, _uniform as uniform
from maskml.train.data.readers import Source
from maskml.train.data.video import (affine_matrix, colour_jitter, paste_objects, pick_objects, random_grayscale,
                                     warp)

TPS_POINTS = 12
TPS_SCALE = 0.02
TPS_PROBABILITY = 0.33


def _tps_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r between point sets (n, 2) and (m, 2)."""
    r2 = torch.cdist(a, b).pow(2)
    return 0.5 * r2 * torch.log(r2.clamp(min=1e-12))


def tps_offsets(g: torch.Generator, size: tuple[int, int], points: int = TPS_POINTS, scale: float = TPS_SCALE
                ) -> torch.Tensor:
    """(H, W, 2) pixel offsets of a thin-plate spline through `points` random control points, each moved by
    N(0, scale) of the image side (a smooth random deformation that is 0 on average)."""
    h, w = size
    control = torch.rand(points, 2, generator=g, dtype=torch.float64)
    moved = torch.randn(points, 2, generator=g, dtype=torch.float64) * scale
    affine = torch.cat([torch.ones(points, 1, dtype=torch.float64), control], 1)
    system = torch.zeros(points + 3, points + 3, dtype=torch.float64)
    system[:points, :points] = _tps_kernel(control, control)
    system[:points, points:] = affine
    system[points:, :points] = affine.T
    rhs = torch.cat([moved, torch.zeros(3, 2, dtype=torch.float64)])
    coeffs = torch.linalg.lstsq(system, rhs).solution
    ys, xs = torch.meshgrid((torch.arange(h, dtype=torch.float64) + 0.5) / h,
                            (torch.arange(w, dtype=torch.float64) + 0.5) / w, indexing="ij")
    grid = torch.stack([xs, ys], -1).view(-1, 2)
    basis = torch.cat([_tps_kernel(grid, control), torch.ones(len(grid), 1, dtype=torch.float64), grid], 1)
    offsets = (basis @ coeffs).view(h, w, 2)
    return (offsets * torch.tensor([w, h], dtype=torch.float64)).float()


class PseudoVideos(Dataset):
    """Clips from the images of a Source (any layout of maskml.train.data.readers)."""

    def __init__(self, source: Source, num_frames: int = 3, max_objects: int = 1, size: int = 384,
                 on_error: str = "skip", min_pixels: int = 4) -> None:
        if num_frames < 1 or max_objects < 1:
            raise MaskmlError(f"pseudo-videos need num_frames and max_objects >= 1 (got {num_frames}, {max_objects})")
        self.loader = SkippingLoader(source, on_error)
        self.num_frames, self.max_objects, self.size, self.min_pixels = num_frames, max_objects, size, min_pixels

    def __len__(self) -> int:
        return len(self.loader.source)

    def frame_matrix(self, g: torch.Generator, h: int, w: int) -> torch.Tensor:
        """One frame's affine map, shorter-side resize and random crop, as a 3 x 3 pixel map."""
        matrix = affine_matrix(g, 20.0, 10.0, (0.5, 2.0), (w / 2, h / 2))
        s = self.size / min(h, w)
        x0 = uniform(g, 0, w * s - self.size)
        y0 = uniform(g, 0, h * s - self.size)
        return torch.tensor([[s, 0, -x0], [0, s, -y0], [0, 0, 1.0]]) @ matrix

    def sample(self, index: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        name, frames, masks = self._object_clip(index, g)
        names = [name]
        # with one object no other image is drawn: the draw would change nothing but the random stream
        pasted_images = int(torch.randint(self.max_objects, (), generator=g)) if self.max_objects > 1 else 0
        for _ in range(pasted_images):
            other = int(torch.randint(len(self.loader.source), (), generator=g))
            other_name, other_frames, other_masks = self._object_clip(other, g)
            frames, masks = paste_objects(frames, masks, other_frames, other_masks, blur_sigma=None)
            names.append(other_name)
        chosen, ids = pick_objects(masks, list(range(1, masks.shape[1] + 1)), g, self.max_objects, self.min_pixels)
        return {"frames": frames, "masks": chosen, "obj_ids": ids, "name": "+".join(names), "seed": seed}

    def _object_clip(self, index: int, g: torch.Generator) -> tuple[str, torch.Tensor, torch.Tensor]:
        """A pseudo-clip of image `index` (or, when its first frame shows no object, of other random images) and
        one object visible in its first frame: the image's name, (T, 3, S, S) uint8 frames, (T, 1, S, S) mask."""
        for _ in range(len(self.loader.source)):
            i, image, masks = self.loader.load(index)
            clip = self._clip(image, masks, g)
            if clip is not None:
                frames, clip_masks = clip
                chosen, _ = pick_objects(clip_masks, list(range(len(masks))), g, 1, self.min_pixels)
                return self.loader.source.names[i], frames, chosen
            index = int(torch.randint(len(self.loader.source), (), generator=g))
        raise MaskmlError(f"no pseudo-video with an object in its first frame could be made from "
                          f"{self.loader.source.root}; check its masks")

    def _clip(self, image: torch.Tensor, masks: torch.Tensor, g: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(T, 3, S, S) uint8 and (T, K, S, S) bool, or None when the first frame shows no object."""
        h, w = image.shape[:2]
        x = image.permute(2, 0, 1)[None].float()
        m = masks[None]
        clip_matrix = affine_matrix(g, 0.0, 0.0, (0.5, 2.0), (w / 2, h / 2))
        if float(torch.rand((), generator=g)) < 0.5:
            clip_matrix = torch.tensor([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]) @ clip_matrix
        # the clip's colour change: one draw on the image, which every frame then shows
        x = random_grayscale(colour_jitter(x, g, 0.1, 0.05, 0.05, 0.05), g, 0.05)
        frames, frame_masks = [], []
        for _ in range(self.num_frames):
            matrix = self.frame_matrix(g, h, w) @ clip_matrix
            offsets = tps_offsets(g, (self.size, self.size)) if float(torch.rand((), generator=g)) < TPS_PROBABILITY \
                else None
            frame, frame_mask = warp(x, m, matrix, (self.size, self.size), offsets)
            frames.append(colour_jitter(frame, g, 0.1, 0.05, 0.05))
            frame_masks.append(frame_mask)
        frames_t = torch.cat(frames)
        clip_masks = torch.cat(frame_masks)
        if not clip_masks[0].flatten(1).sum(1).ge(self.min_pixels).any():
            return None
        return frames_t.round().clamp(0, 255).to(torch.uint8), clip_masks

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, index)
