"""The synthetic videos the video-training benchmarks learn from and are scored on (bench_train_cutie,
bench_train_sam2_video): the same arguments give the same files, so both recipes are measured alike and can
share one folder of videos (--data)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from maskml.train.data.synth import SynthConfig, generate
from maskml.train.data.video import HeldOutVideos, open_videos
from maskml.train.video_eval import evaluate_videos, hold_first_mask

PHOTOS = ("examples", "../shared/data/images")  # real photos for cut-outs and backgrounds, when present


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="folder of the synthetic videos (default: OUT/data)")
    p.add_argument("--train-videos", type=int, default=48)
    p.add_argument("--train-candidates", type=int, default=160,
                   help="videos generated for training; the first --train-videos whose objects stay in view train")
    p.add_argument("--val-videos", type=int, default=8)
    p.add_argument("--min-visible", type=float, default=0.75,
                   help="held-out videos: each first-frame object annotated in at least this share of the frames")
    p.add_argument("--video-size", default="96x72", help="WIDTHxHEIGHT of the synthetic videos")
    p.add_argument("--video-frames", type=int, default=16)


def tracked_videos(videos, count: int, min_visible: float) -> HeldOutVideos:
    """The first `count` videos whose first-frame objects stay annotated in at least min_visible of the frames:
    synthetic objects often leave the frame or hide for good within a few frames, and on such videos predicting
    nothing scores well (J = 1 where both masks are empty), which is not tracking."""
    kept = []
    for video in videos:
        item = HeldOutVideos([video])[0]
        if item["obj_ids"] and item["masks"].flatten(2).any(2).float().mean(0).min() >= min_visible:
            kept.append(video)
        if len(kept) == count:
            break
    return HeldOutVideos(kept)


def synthetic_videos(args, out: Path) -> tuple[list, HeldOutVideos]:
    """(the training videos, the held-out videos), generated under args.data or out/data if needed. Both are
    chosen alike (see tracked_videos): --train-videos of --train-candidates, --val-videos of four times as many
    held-out videos (another seed)."""
    width, height = (int(v) for v in args.video_size.split("x"))
    photos = [p for p in PHOTOS if Path(p).is_dir()]
    data = args.data or out / "data"
    train_root, val_root = data / f"train_{args.train_candidates}", data / f"val_{args.val_videos * 4}"
    common = dict(width=width, height=height, frames=args.video_frames, min_objects=1, max_objects=3, photos=photos)
    generate(train_root, SynthConfig(videos=args.train_candidates, seed=1, **common), progress=False)
    generate(val_root, SynthConfig(videos=args.val_videos * 4, seed=2, **common), progress=False)
    train = tracked_videos(open_videos(train_root)[0], args.train_videos, args.min_visible).videos
    print(f"training on {len(train)} of {args.train_candidates} videos", flush=True)
    return train, tracked_videos(open_videos(val_root)[0], args.val_videos, args.min_visible)


def predict_nothing(frames: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The empty tracker (J = F = 1 only where the object is gone): what tracking must beat besides holding
    the first mask."""
    return torch.zeros(len(frames), *first.shape[-2:], dtype=torch.long)


def trivial_scores(val: HeldOutVideos) -> dict[str, float]:
    """The J&F of the two trivial trackers a trained one must beat, printed and returned by name."""
    scores = {"hold-the-first-mask J&F": evaluate_videos(hold_first_mask, val)["J&F"],
              "predict-nothing J&F": evaluate_videos(predict_nothing, val)["J&F"]}
    print(f"{len(val)} held-out videos: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
    return scores
