"""Simulated prompts: the random ones of SAM 2's training, and the deterministic clicks of the SAM paper's
interactive evaluation.

Training (as sam2/training/model/sam2.py with its released fine-tuning config): each object gets a mask
prompt (probability 0.5; the ground truth as the dense input), a box (0.25: the mask's box with each corner
moved by up to 10% of the box's side, at most 20 pixels) or one click drawn uniformly from the mask (0.25).
Objects prompted with a box or a click then get correction clicks: each drawn uniformly from the error
region of the previous prediction (positive in a missed part, negative in a false one), or, with
probability 0.1, from the ground truth itself.

Evaluation: the first click at the object's centre (the pixel farthest from its boundary), each next one at
the centre of the widest error region (the error pixel farthest from the error's boundary), positive for a
missed region, negative for a false one.

Points are (x, y) pixel indices; box corners are points with labels 2 and 3 (SAM 2's convention, which
maskml's prompt encoder embeds exactly as a box for SAM too); label -1 pads.
"""
from __future__ import annotations

import torch

MASK, BOX, CLICK = 0, 1, 2


def choose_prompt_kinds(n: int, g: torch.Generator, prob_mask: float = 0.5, prob_box: float = 0.25) -> torch.Tensor:
    """(n,) int: MASK, BOX or CLICK for each object."""
    r = torch.rand(n, generator=g)
    return torch.where(r < prob_mask, MASK, torch.where(r < prob_mask + prob_box, BOX, CLICK))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) float x0, y0, x1, y1: the first and last rows/columns holding the mask."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[-2:]
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def noisy_box_points(masks: torch.Tensor, g: torch.Generator, noise: float = 0.1, bound: float = 20.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Box corners (K, 2, 2) with labels (K, 2) = [2, 3], each coordinate moved by up to noise x the box's side
    (at most `bound` pixels), clamped to the image."""
    boxes = mask_boxes(masks)
    h, w = masks.shape[-2:]
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)
    limit = (side * noise).clamp(max=bound).repeat(1, 2)  # (K, 4): dx, dy, dx, dy
    jitter = (2 * torch.rand(boxes.shape, generator=g) - 1).to(boxes.device) * limit
    top = boxes.new_tensor([w - 1, h - 1, w - 1, h - 1])
    boxes = torch.minimum((boxes + jitter).clamp(min=0), top)
    labels = torch.tensor([2, 3], dtype=torch.int64, device=masks.device).expand(len(boxes), 2)
    return boxes.reshape(-1, 2, 2), labels


def _pixel_points(flat_index: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([flat_index % width, flat_index // width], dim=-1).float()


def sample_clicks(gt: torch.Tensor, pred: torch.Tensor | None, g: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object drawn uniformly from the error region of `pred` (K, H, W) bool against `gt`
    (or from `gt` when pred is None): points (K, 1, 2), labels (K, 1) (1 in a missed part, 0 in a false
    one). An object without error gets a click anywhere, labelled by the ground truth there."""
    k, h, w = gt.shape
    region = gt if pred is None else gt ^ pred
    weights = region.reshape(k, -1).float()
    weights[weights.sum(1) == 0] = 1.0
    index = torch.multinomial(weights.cpu(), 1, generator=g).to(gt.device)[:, 0]
    labels = gt.reshape(k, -1).gather(1, index[:, None]).long()
    return _pixel_points(index, w)[:, None], labels


def _min_plus_offsets(lines: torch.Tensor) -> torch.Tensor:
    """(R, L) -> (R, L): out[r, i] = min over j of lines[r, j] + (i - j)^2, in chunks of rows."""
    length = lines.shape[1]
    at = torch.arange(length, device=lines.device, dtype=lines.dtype)
    offsets = (at[:, None] - at[None, :]) ** 2  # (target, source)
    out = torch.empty_like(lines)
    rows = max(1, (1 << 23) // (length * length))
    for r in range(0, lines.shape[0], rows):
        out[r:r + rows] = (lines[r:r + rows, None, :] + offsets).amin(2)
    return out


def distance_to_boundary(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, H, W) float: each mask pixel's Euclidean distance to the nearest pixel outside the
    mask, where everything beyond the image counts as outside (0 off the mask). Exact: the two-pass squared
    distance transform, each pass a minimum over one axis, in chunks that bound the memory."""
    k, h, w = masks.shape
    outside = ~torch.nn.functional.pad(masks, (1, 1, 1, 1), value=False)  # (K, H+2, W+2)
    cost = torch.where(outside, 0.0, float((h + w) ** 2))
    # pass 1 down the columns (squared distance to the nearest outside pixel of the column), then pass 2
    # along the rows (adding the squared horizontal offset)
    columns = _min_plus_offsets(cost.transpose(1, 2).reshape(-1, h + 2)).reshape(k, w + 2, h + 2).transpose(1, 2)
    out = _min_plus_offsets(columns.reshape(-1, w + 2)).reshape(k, h + 2, w + 2)
    return out[:, 1:-1, 1:-1].sqrt() * masks


def center_clicks(gt: torch.Tensor, pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation click for each object: at the centre of the object (pred None), else at the centre of
    the widest error region. Points (K, 1, 2) float, labels (K, 1) (1 missed region, 0 false region)."""
    k, h, w = gt.shape
    if pred is None:
        dist = distance_to_boundary(gt).reshape(k, -1)
        return _pixel_points(dist.argmax(1), w)[:, None], torch.ones(k, 1, dtype=torch.int64, device=gt.device)
    missed = distance_to_boundary(gt & ~pred).reshape(k, -1)
    false = distance_to_boundary(pred & ~gt).reshape(k, -1)
    positive = missed.amax(1) >= false.amax(1)
    index = torch.where(positive, missed.argmax(1), false.argmax(1))
    return _pixel_points(index, w)[:, None], positive.long()[:, None]
