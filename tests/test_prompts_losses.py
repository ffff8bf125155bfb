"""Prompt simulation (training and evaluation clicks) and the SAM / SAM 2 mask losses, on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from maskml.train.losses import LossWeights, dice_loss, focal_loss, mask_iou, mask_losses
from maskml.train.prompts import (BOX, CLICK, MASK, center_clicks, choose_prompt_kinds, distance_to_boundary,
                                  mask_boxes, noisy_box_points, sample_clicks)


def _square(h, w, y0, y1, x0, x1) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_focal_loss_hand_computed():
    logits = torch.zeros(1, 1, 1, 2)
    targets = torch.tensor([[[True, False]]])
    # p = 0.5 everywhere: ce = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 on the positive, 0.75 on the negative
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # a confident right answer costs almost nothing, a confident wrong one a lot
    sure = torch.tensor([[[[10.0, -10.0]]]])
    assert focal_loss(sure, targets).item() < 1e-8
    assert focal_loss(-sure, targets).item() == pytest.approx((0.25 + 0.75) * 10 / 2, rel=1e-3)


def test_dice_loss_hand_computed():
    targets = torch.tensor([[[True, True], [False, False]]])
    everywhere = torch.full((1, 1, 2, 2), 50.0)  # probability 1 on all 4 pixels
    assert dice_loss(everywhere, targets).item() == pytest.approx(1 - (2 * 2 + 1) / (4 + 2 + 1), abs=1e-6)
    exact = torch.tensor([[[[50.0, 50.0], [-50.0, -50.0]]]])
    assert dice_loss(exact, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_iou_of_thresholded_logits():
    targets = torch.tensor([[[True, True], [False, False]]])
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])  # predicts the left column: 1 shared of 3
    assert mask_iou(logits, targets).item() == pytest.approx(1 / 3)


def test_mask_losses_use_the_best_candidate_and_weights():
    target = _square(8, 8, 0, 4, 0, 8)[None]
    good = torch.where(target, 20.0, -20.0)[:, None]
    bad = -good
    logits = torch.cat([bad, bad, good, bad], dim=1)  # token 2 is right
    iou_pred = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    multimask = torch.tensor([[False, True, True, True]])
    weights = LossWeights()
    out = mask_losses(logits, iou_pred, target, multimask, weights)
    assert out["focal"].item() < 1e-6 and out["dice"].item() < 1e-6
    assert out["best_iou"].item() == 1.0
    # IoU loss on all three multimask candidates: true IoUs 0, 1, 0 against 0.5 -> MSE 0.25 each
    assert out["iou"].item() == pytest.approx(0.25)
    assert out["loss"].item() == pytest.approx(20 * out["focal"].item() + out["dice"].item() + 0.25, rel=1e-5)
    # single-mask output: only token 0 (wrong here) counts; L1 for SAM 2, with the object-score BCE
    single = torch.tensor([[True, False, False, False]])
    sam2 = LossWeights(iou_l1=True)
    out = mask_losses(logits, iou_pred, target, single, sam2, object_score_logits=torch.zeros(1, 1))
    assert out["best_iou"].item() == 0.0 and out["iou"].item() == pytest.approx(0.5)
    assert out["object_score"].item() == pytest.approx(math.log(2))


def test_losses_backpropagate():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    iou_pred = torch.rand(2, 3, requires_grad=True)
    target = torch.rand(2, 8, 8) > 0.5
    out = mask_losses(logits, iou_pred, target, torch.ones(2, 3, dtype=torch.bool), LossWeights())
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0 and iou_pred.grad.abs().sum() > 0


def test_prompt_kind_probabilities():
    kinds = choose_prompt_kinds(20000, torch.Generator().manual_seed(0))
    share = torch.bincount(kinds, minlength=3).float() / len(kinds)
    assert share[MASK].item() == pytest.approx(0.5, abs=0.02)
    assert share[BOX].item() == pytest.approx(0.25, abs=0.02)
    assert share[CLICK].item() == pytest.approx(0.25, abs=0.02)


def test_boxes_and_their_noise():
    masks = torch.stack([_square(100, 120, 10, 50, 20, 100), _square(100, 120, 0, 100, 0, 120)])
    assert mask_boxes(masks).tolist() == [[20, 10, 99, 49], [0, 0, 119, 99]]
    points, labels = noisy_box_points(masks, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[2, 3], [2, 3]]
    # first box: 79 x 39 pixels -> moves of at most 7.9 and 3.9 (under the 20-pixel bound)
    shift = (points[0].reshape(4) - torch.tensor([20.0, 10, 99, 49])).abs()
    assert (shift <= torch.tensor([7.9, 3.9, 7.9, 3.9]) + 1e-4).all() and shift.sum() > 0
    assert points[1].min() >= 0 and points[1, :, 0].max() <= 119 and points[1, :, 1].max() <= 99  # clamped


def test_training_clicks_come_from_the_error_region():
    gt = _square(20, 20, 0, 10, 0, 20)[None].repeat(50, 1, 1)
    pred = _square(20, 20, 5, 15, 0, 20)[None].repeat(50, 1, 1)
    points, labels = sample_clicks(gt, pred, torch.Generator().manual_seed(0))
    ys = points[:, 0, 1].long()
    missed = ys < 5  # rows 0-4: in the object, not predicted -> positive
    false = (ys >= 10) & (ys < 15)  # rows 10-14: predicted, not the object -> negative
    assert (missed | false).all()
    assert torch.equal(labels[:, 0].bool(), missed) and missed.any() and false.any()
    points, labels = sample_clicks(gt, None, torch.Generator().manual_seed(1))  # from the ground truth
    assert (points[:, 0, 1] < 10).all() and labels.all()


def test_distance_transform_against_brute_force():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 9, 13, generator=g) > 0.25
    got = distance_to_boundary(masks)
    ys, xs = torch.meshgrid(torch.arange(-1, 10), torch.arange(-1, 14), indexing="ij")
    for k in range(2):
        padded = torch.nn.functional.pad(masks[k], (1, 1, 1, 1))
        oy, ox = ys[~padded].float(), xs[~padded].float()
        for y in range(9):
            for x in range(13):
                want = torch.sqrt(((oy - y) ** 2 + (ox - x) ** 2).min()).item() if masks[k, y, x] else 0.0
                assert got[k, y, x].item() == pytest.approx(want, abs=1e-5)


def test_evaluation_clicks_centre_of_object_then_of_widest_error():
    gt = _square(40, 40, 10, 31, 5, 26)[None]  # a 21 x 21 square, centre pixel (15, 20) as (x, y)
    points, labels = center_clicks(gt, None)
    assert points.tolist() == [[[15.0, 20.0]]] and labels.tolist() == [[1]]
    # prediction: the top half of the square plus a thin false strip; the missed bottom half is the widest error
    pred = _square(40, 40, 10, 20, 5, 26) | _square(40, 40, 0, 3, 0, 40)
    points, labels = center_clicks(gt, pred[None])
    assert labels.tolist() == [[1]]
    x, y = points[0, 0].tolist()
    assert 20 <= y <= 31 and 5 <= x <= 26
    # a wide false region and a thin missed one: a negative click in the false region
    pred = gt[0] | _square(40, 40, 0, 8, 0, 40)
    pred[30, 5:26] = False
    points, labels = center_clicks(gt, pred[None])
    assert labels.tolist() == [[0]] and points[0, 0, 1].item() < 8
