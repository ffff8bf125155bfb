"""Box operations on tensors (XYXY boxes unless a name says otherwise)."""
from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) -> (N, M) intersection over union."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression. A box is dropped when its IoU with a kept, higher-scoring
    box is above the threshold (strictly). Kept indices come in descending score order, ties in
    input order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    overlaps = (iou > iou_threshold).cpu()
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (..., 4) int64 XYXY with inclusive x1, y1 (the last foreground column
    and row); an empty mask gives 0, 0, 0, 0."""
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    y = torch.arange(h, device=masks.device)
    x = torch.arange(w, device=masks.device)
    bottom = (rows * y).amax(dim=-1)
    top = torch.where(rows, y, h).amin(dim=-1)
    right = (cols * x).amax(dim=-1)
    left = torch.where(cols, x, w).amin(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    return boxes * ~empty[..., None]


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return out
