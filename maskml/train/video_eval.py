"""J&F of a tracker on held-out videos during training (semi-supervised: the first frame's masks given),
scored as maskml.eval.davis scores (the DAVIS 2017 tool: per object J and F over the frames but the first
and the last, then their means over objects), with the videos sharded over the processes of a torchrun run.

    metrics = evaluate_videos(tracker_fn(model), HeldOutVideos(videos))    # {"J&F", "J", "F", "videos"}

A track function takes (frames (T, 3, H, W) uint8, first-frame masks (N, H, W) bool) and returns the
predicted label map of every frame, (T, H, W) int64 with 0 = background and n + 1 = object n.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from maskml.eval.davis import _object_scores, statistics
from maskml.errors import MaskmlError
from maskml.train import distributed as dist

TrackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def label_map(masks: torch.Tensor) -> torch.Tensor:
    """(…, N, H, W) bool -> (…, H, W) int64 labels, a later object over an earlier one where they overlap."""
    labels = torch.zeros(*masks.shape[:-3], *masks.shape[-2:], dtype=torch.long, device=masks.device)
    for k in range(masks.shape[-3]):
        labels[masks[..., k, :, :]] = k + 1
    return labels


def tracker_fn(model, options: dict | None = None) -> TrackFn:
    """Cutie (maskml.predict.cutie.VideoTracker, with its eval options) as a track function."""
    from maskml.predict.cutie.tracker import VideoTracker

    def track(frames: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        tracker = VideoTracker(model, **(options or {}))
        device = model.pixel_mean.device
        first_labels = label_map(first[None])[0].to(device)
        out = []
        for t, frame in enumerate(frames):
            result = tracker.step(frame.permute(1, 2, 0).to(device), mask=first_labels if t == 0 else None)
            # channel order of the tracker = object ids 1..N = our object index + 1
            out.append(result.labels.cpu())
        return torch.stack(out)

    return track


def hold_first_mask(frames: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The trivial tracker: every frame gets the first frame's masks."""
    return label_map(first[None])[0].expand(len(frames), -1, -1).clone()


def video_scores(pred: torch.Tensor, gt_masks: torch.Tensor) -> list[tuple[float, float]]:
    """(J mean, F mean) per object of one video: pred (T, H, W) labels, gt (T, N, H, W) bool; the first and
    the last frame are not scored (the DAVIS tool's rule)."""
    if len(pred) < 3:
        raise MaskmlError(f"a validation video needs at least 3 frames (the first and the last are not scored), "
                          f"got {len(pred)}")
    gt = label_map(gt_masks)[1:-1].numpy()
    pred = pred[1:-1].numpy()
    scores = []
    for obj in range(1, gt_masks.shape[1] + 1):
        j, f = _object_scores(gt == obj, pred == obj)
        scores.append((statistics(j)[0], statistics(f)[0]))
    return scores


def evaluate_videos(track: TrackFn, dataset) -> dict[str, float]:
    """Mean J, F and J&F over the objects of every video of `dataset` (items of HeldOutVideos); each process
    tracks its shard of the videos, the scores are gathered so every process returns the same numbers."""
    local = []
    for index in dist.shard(len(dataset)):
        item = dataset[index]
        if not item["obj_ids"]:
            continue
        pred = track(item["frames"], item["masks"][0])
        local.append((item["name"], video_scores(pred, item["masks"])))
    gathered = sorted(v for part in dist.all_gather_objects(local) for v in part)
    scores = np.array([s for _, objects in gathered for s in objects], dtype=np.float64).reshape(-1, 2)
    if not len(scores):
        raise MaskmlError("no validation video has an object in its first frame: nothing to score")
    j, f = float(scores[:, 0].mean()), float(scores[:, 1].mean())
    return {"J&F": (j + f) / 2, "J": j, "F": f, "videos": float(len(gathered))}
