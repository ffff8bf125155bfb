"""Proof that the cutie recipe learns: Cutie-small from its deterministic random weights (no ImageNet
backbone), trained on synthetic videos (`maskml data synth`: moving, turning, occluding objects that enter
and leave) at a reduced size for a budget of training time; J&F on held-out synthetic videos (semi-supervised:
first-frame masks, maskml.train.video_eval, the DAVIS tool's scoring) before training and at intervals,
against the trivial tracker that holds the first frame's mask. Writes curve.csv and curve.png into --out.

    python benchmarks/bench_train_cutie.py --minutes 30 --out runs/bench_train_cutie
    python benchmarks/bench_train_cutie.py --gpu --out runs/gpu_cutie    # peak GPU memory and clips/s

The loop is the recipe's training_step (clips of recipe.num_frames frames, memory written through the clip,
the official losses) with AdamW over the recipe's parameter groups, so the budget is training time (the
engine, maskml.train, counts steps). Evaluation time is not counted in the training budget.

--gpu: the official main stage (480 px crops, 8-frame clips, 3 reference frames, 3 objects, 12544 points,
bf16 autocast) through the engine (maskml.train.engine.Trainer) on CUDA, for batch sizes 1, 2 and 4 in one
process: peak GPU memory (torch.cuda.max_memory_allocated, reset before each) and clips per second over the
steps after the first log window. Without CUDA it prints one line and exits with status 1.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from _common import (budget_rate, draw_curve, next_items, recipe_step, train_on_budget, training_parser,
                     write_curve)
from _synthetic_videos import add_arguments, synthetic_videos, trivial_scores
from maskml.io.images import atomic_path
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.data.video import VideoClips
from maskml.train.recipes.cutie import CutieRecipe
from maskml.train.video_eval import evaluate_videos, tracker_fn

def config(data_root: Path, args) -> OmegaConf:
    return OmegaConf.create({
        "seed": 0,
        "model": {"name": "cutie_small", "checkpoint": None},
        "data": {"root": str(data_root), "layout": "auto", "max_gap": args.max_gap, "val_videos": 0,
                 "val_root": None, "on_error": "skip"},
        "optim": {"lr": args.lr, "weight_decay": 0.001},
        "recipe": {"stage": "main", "num_frames": args.frames, "num_ref_frames": 3, "max_objects": 3,
                   "num_points": args.points, "size": args.size, "oversample_ratio": 3.0,
                   "importance_sample_ratio": 0.75, "deep_update_prob": 0.2, "merge_probability": 0.0,
                   "max_gap_schedule": None, "max_gap_schedule_fraction": None,
                   "backbone_lr_ratio": args.backbone_lr_ratio, "embed_weight_decay": 0.0,
                   "aux_loss": {"sensory": 0.01, "query": 0.01}, "val_tracker": {}},
    })


def gpu_figures(args) -> int:
    """Peak GPU memory and clips/s of the official main stage, per batch size (see the module docstring)."""
    from maskml.configs import compose_train_config
    from maskml.train.engine import Trainer

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 1
    root = args.out / "data" / "gpu_videos"
    generate(root, SynthConfig(videos=12, seed=3, width=854, height=480, frames=24), progress=False)
    steps = max(4, args.gpu_steps)
    for batch in (1, 2, 4):
        out_dir = args.out / f"gpu_batch{batch}"
        cfg = compose_train_config("cutie", [
            f"data.root={root}", "trainer.device=cuda", "trainer.precision=bf16", f"trainer.batch_size={batch}",
            f"trainer.max_steps={steps}", f"trainer.log_every={steps // 2}", f"trainer.ckpt_every={steps}",
            "trainer.num_workers=4", "trainer.progress=false", f"trainer.out_dir={out_dir}"], ())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        Trainer(cfg).fit()
        peak = torch.cuda.max_memory_allocated() / 2**30
        with open(out_dir / "log.csv", newline="") as f:
            steps_per_s = float(list(csv.DictReader(f))[-1]["steps_per_s"])
        print(f"cutie_small main stage, 480 px, 8 frames, batch {batch}: peak {peak:.1f} GiB, "
              f"{steps_per_s * batch:.2f} clips/s ({torch.cuda.get_device_name()})", flush=True)
    return 0


def main() -> None:
    p = training_parser(__doc__, "runs/bench_train_cutie", eval_every=6.0)
    add_arguments(p)
    p.add_argument("--size", type=int, default=64, help="training crop side (the recipe's 480)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (the recipe's 8)")
    p.add_argument("--points", type=int, default=2048, help="sampled points per frame (the recipe's 12544)")
    p.add_argument("--max-gap", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--backbone-lr-ratio", type=float, default=1.0,
                   help="the recipe's 0.1 protects a pretrained backbone; from random weights it learns at lr")
    p.add_argument("--decay-at", type=float, default=0.8,
                   help="share of the time budget after which the rate drops to a tenth (the official step schedule)")
    p.add_argument("--gpu", action="store_true", help="measure peak GPU memory and clips/s instead (CUDA)")
    p.add_argument("--gpu-steps", type=int, default=20, help="--gpu: optimizer steps per batch size")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gpu:
        raise SystemExit(gpu_figures(args))
    torch.set_num_threads(args.threads)

    train_videos, val = synthetic_videos(args, args.out)
    recipe = CutieRecipe(config(args.data or args.out / "data", args))  # its clips are made here, from train_videos
    model = recipe.build_model().train()
    s = recipe.settings
    train = VideoClips(train_videos, s["num_frames"], s["max_objects"], s["size"], max_gap=args.max_gap)
    optimizer = torch.optim.AdamW(recipe.param_groups(model), lr=args.lr)
    order: list = []

    def step(n: int, trained_seconds: float, budget: float) -> dict:
        out = recipe_step(recipe, model, optimizer, next_items(train, order, n, args.batch),
                          budget_rate(n, trained_seconds, budget, args.decay_at), clip_grad=3.0)
        return {"loss": float(out["loss"].detach()), "iou": float(out["iou"])}

    def evaluate() -> float:
        model.eval()
        score = evaluate_videos(tracker_fn(model), val)["J&F"]
        model.train()
        return score

    trivial = trivial_scores(val)
    baseline, nothing = trivial["hold-the-first-mask J&F"], trivial["predict-nothing J&F"]
    rows = train_on_budget(step, evaluate, args.minutes, args.eval_every, "J&F", args.log_every)
    untrained, final, steps, minutes = rows[0]["J&F"], rows[-1]["J&F"], rows[-1]["step"], rows[-1]["minutes"]
    write_curve(rows, args.out / "curve.csv", trivial)
    with atomic_path(args.out / "model.pt") as tmp:
        recipe.export(model, tmp)
    title = (f"cutie_small from random weights, {args.size} px crops, {args.frames}-frame clips, synthetic videos\n"
             f"held-out J&F {untrained:.3f} -> {final:.3f} in {steps} steps (hold-first-mask {baseline:.3f}, "
             f"nothing {nothing:.3f})")
    draw_curve(rows, args.out / "curve.png", title, "J&F",
               "held-out J&F (blue), hold-first-mask (grey), training loss / max (red); training minutes",
               baseline=baseline)
    print(f"untrained {untrained:.4f} -> trained {final:.4f}; hold-first-mask {baseline:.4f}; margin "
          f"{final - baseline:+.4f} after {steps} steps, {minutes:.1f} training min; "
          f"{args.out / 'curve.csv'}, {args.out / 'curve.png'}", flush=True)
    assert math.isfinite(final)


if __name__ == "__main__":
    main()
