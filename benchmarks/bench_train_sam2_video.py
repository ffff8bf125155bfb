"""Proof that sam2_video learns: SAM 2.1-T from its deterministic random weights (image encoder frozen), trained
with the recipe's training_step on synthetic videos (`maskml data synth`: moving, occluding, entering and
leaving objects; the videos of bench_train_cutie) at a reduced input size for a budget of training time; J&F on
held-out videos whose objects stay in view (first-frame masks, maskml's VideoSession, the DAVIS measures) before
training and at intervals, against the trivial trackers "hold the first-frame mask" and "predict nothing".
Writes curve.csv, curve.png and the trained model.pt (official layout) into --out.

    python benchmarks/bench_train_sam2_video.py --minutes 30 --out runs/bench_train_sam2_video

The loop is the recipe's training_step with AdamW over the recipe's parameter groups (warm-up, then constant), so
the budget is training time rather than steps (the engine, maskml.train, counts steps). Prompts as the recipe
draws them (mask / box / click 0.5 / 0.25 / 0.25, 1-2 conditioning frames, corrections on 1-2 frames), with
fewer correction clicks per frame by default (--corrections) to spend the CPU on tracking.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from _common import (budget_rate, draw_curve, next_items, recipe_step, train_on_budget, training_parser,
                     write_curve)
from _synthetic_videos import add_arguments, synthetic_videos, trivial_scores
from maskml.io.images import atomic_path
from maskml.train.recipes.sam2_video import Sam2Video, track_video
from maskml.train.video_eval import evaluate_videos

CONFIGS = Path(__file__).resolve().parents[1] / "maskml" / "configs"


def config(data_root: Path, args) -> OmegaConf:
    recipe_config = OmegaConf.load(CONFIGS / "recipe" / "sam2_video.yaml")
    recipe = OmegaConf.merge(recipe_config.recipe, {
        "num_frames": args.frames, "max_objects": args.objects, "prob_mask": args.prob_mask,
        "prob_box": args.prob_box, "corrections_per_frame": args.corrections})
    data = OmegaConf.merge(OmegaConf.load(CONFIGS / "data" / "synth_video.yaml"), recipe_config.data,
                           {"root": str(data_root)})
    return OmegaConf.create({
        "seed": 0,
        "model": {"name": "sam2.1_hiera_t", "checkpoint": args.checkpoint, "image_size": args.image_size},
        "data": data, "recipe": recipe,
        "optim": {"lr": args.lr, "encoder_lr": None, "layer_decay": 1.0, "weight_decay": 0.01},
    })


def main() -> None:
    p = training_parser(__doc__, "runs/bench_train_sam2_video", eval_every=5.0)
    add_arguments(p)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--checkpoint", default=None,
                   help="start from these weights (official layout, e.g. an earlier run's model.pt) instead of the "
                        "deterministic random ones")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (the recipe's 8)")
    p.add_argument("--objects", type=int, default=3, help="objects per clip (the recipe's 3)")
    p.add_argument("--corrections", type=int, default=1, help="correction clicks per corrected frame (the recipe's 7)")
    p.add_argument("--prob-mask", type=float, default=0.5, help="share of mask-prompted clips (the recipe's 0.5)")
    p.add_argument("--prob-box", type=float, default=0.25, help="share of box-prompted clips (the recipe's 0.25)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--train-encoder", action="store_true",
                   help="train the image encoder too (default: frozen, its random features as they are)")
    p.add_argument("--decay-at", type=float, default=0.8,
                   help="share of the time budget after which the rate drops to a tenth (the official step schedule)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    train_videos, val = synthetic_videos(args, args.out)
    recipe = Sam2Video(config(args.data or args.out / "data", args))
    model = recipe.build_model()
    model.image_encoder.requires_grad_(args.train_encoder)
    train = recipe.clips(train_videos)  # the recipe's clips of the videos bench_train_cutie trains on
    optimizer = torch.optim.AdamW(recipe.param_groups(model))
    order: list = []

    def step(n: int, trained_seconds: float, budget: float) -> dict:
        out = recipe_step(recipe, model, optimizer, next_items(train, order, n, 1, seed_stride=100003),
                          budget_rate(n, trained_seconds, budget, args.decay_at), args.clip_grad)
        return {"loss": float(out["loss"].detach()), "tracked_iou": float(out.get("tracked_iou", math.nan))}

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            score = evaluate_videos(lambda frames, first: track_video(model, frames, first), val)["J&F"]
        model.train()
        model.image_encoder.train(args.train_encoder)
        return score

    wall_start = time.perf_counter()
    trivial = trivial_scores(val)
    baseline, nothing = trivial["hold-the-first-mask J&F"], trivial["predict-nothing J&F"]
    rows = train_on_budget(step, evaluate, args.minutes, args.eval_every, "J&F", args.log_every)
    untrained, final, steps, minutes = rows[0]["J&F"], rows[-1]["J&F"], rows[-1]["step"], rows[-1]["minutes"]
    with atomic_path(args.out / "model.pt") as tmp:
        recipe.export(model, tmp)
    write_curve(rows, args.out / "curve.csv", trivial)
    encoder = "encoder trained" if args.train_encoder else "encoder frozen"
    title = (f"sam2.1_hiera_t from random weights ({encoder}), {args.image_size} px, synthetic videos\n"
             f"held-out J&F {untrained:.3f} -> {final:.3f} in {steps} clips; hold-first-mask {baseline:.3f}, "
             f"predict nothing {nothing:.3f}")
    draw_curve(rows, args.out / "curve.png", title, "J&F",
               "held-out J&F (blue), hold-first-mask J&F (grey), training loss / max (red); minutes", baseline)
    print(f"J&F untrained {untrained:.4f} -> trained {final:.4f}; hold-first-mask {baseline:.4f}, predict nothing "
          f"{nothing:.4f} (margin {final - baseline:+.4f}) after {steps} clips, {minutes:.1f} min of training "
          f"({(time.perf_counter() - wall_start) / 60:.1f} min with evaluations); "
          f"{args.out / 'curve.csv'}, {args.out / 'curve.png'}", flush=True)
    assert math.isfinite(final)


if __name__ == "__main__":
    main()
