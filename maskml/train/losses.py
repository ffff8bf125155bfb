"""The mask losses of SAM and SAM 2 (sam2/training/loss_fns.py, weights of the released fine-tuning config):
20 x focal (alpha 0.25, gamma 2) + 1 x dice + 1 x IoU prediction (MSE for SAM, L1 for SAM 2) [+ 1 x the
object-score BCE for SAM 2], focal and dice on the best of several candidate masks, per object.

Every function takes logits (K, M, H, W) for K objects and M candidates, targets (K, H, W) bool (or (K, M, H, W):
one per candidate, e.g. a teacher's masks in distillation), and returns per-candidate values (K, M), so the best
candidate can be picked.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _per_candidate(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return targets[:, None].expand_as(logits) if targets.dim() == logits.dim() - 1 else targets


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), averaged over pixels: (K, M)."""
    t = _per_candidate(targets, logits).float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - (2 |P.T| + 1) / (|P| + |T| + 1) with P the sigmoid probabilities: (K, M)."""
    prob = logits.sigmoid().flatten(2)
    t = _per_candidate(targets, logits).float().flatten(2)
    return 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logits > 0) with the targets: (K, M), 0 when both are empty."""
    pred = logits.flatten(2) > 0
    t = _per_candidate(targets, logits).flatten(2)
    inter = (pred & t).sum(-1).float()
    union = (pred | t).sum(-1).float()
    return inter / union.clamp(min=1.0)


@dataclass
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0  # SAM 2 only
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    iou_l1: bool = False  # SAM 2: L1, SAM: MSE
    supervise_all_iou: bool = True  # the IoU loss on every candidate, not only the best one


def mask_losses(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor,
                weights: LossWeights, object_score_logits: torch.Tensor | None = None,
                present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One decoder pass: logits (K, M, H, W), iou_pred (K, M), targets (K, H, W), candidates (K, M) bool (the
    masks each object may be judged on: the multi-mask outputs, or the single one). Focal and dice on the
    candidate with the lowest weighted focal + dice; each term averaged over the K objects. present (K,) bool:
    whether each object is in view (video frames; default all): as SAM 2's training, absent objects add only
    the object-score loss (target 0), and the other terms still divide by K."""
    focal = focal_loss(logits, targets, weights.focal_alpha, weights.focal_gamma)
    dice = dice_loss(logits, targets)
    combined = weights.focal * focal + weights.dice * dice
    best = combined.detach().masked_fill(~candidates, float("inf")).argmin(1, keepdim=True)
    true_iou = mask_iou(logits.detach(), targets)
    iou_error = (iou_pred - true_iou).abs() if weights.iou_l1 else (iou_pred - true_iou) ** 2
    if weights.supervise_all_iou:
        iou_loss = (iou_error * candidates).sum(1) / candidates.sum(1).clamp(min=1)
    else:
        iou_loss = iou_error.gather(1, best)[:, 0]
    shown = torch.ones(len(targets), device=targets.device) if present is None else present.float()
    out = {"focal": (focal.gather(1, best)[:, 0] * shown).mean(), "dice": (dice.gather(1, best)[:, 0] * shown).mean(),
           "iou": (iou_loss * shown).mean()}
    if object_score_logits is not None:
        out["object_score"] = F.binary_cross_entropy_with_logits(
            object_score_logits, shown[:, None].to(object_score_logits.dtype))
    out["loss"] = (weights.focal * out["focal"] + weights.dice * out["dice"] + weights.iou * out["iou"]
                   + weights.object_score * out.get("object_score", 0.0))
    out["best_iou"] = true_iou.gather(1, best)[:, 0].mean()
    return out
