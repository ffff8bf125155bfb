"""Proof that sam_finetune learns: MobileSAM from its deterministic random weights, every module trainable, at a
reduced input size, fine-tuned on synthetic images for a budget of training time; held-out 1-click mIoU (the SAM
paper's protocol, maskml.eval.interactive) measured before training and at intervals. Writes curve.csv and
curve.png (drawn with OpenCV) into --out.

    python benchmarks/bench_train_sam.py --minutes 30 --out runs/bench_train_sam
    python benchmarks/bench_train_sam.py --overfit --out runs/bench_overfit   # one image, one object

The loop here is the recipe's training_step with AdamW (warm-up, then constant), so the budget is training time
rather than steps (the engine, maskml.train, counts steps); evaluations are not counted in it.
"""
from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from _common import (budget_rate, draw_curve, next_items, recipe_step, train_on_budget, training_parser,
                     write_curve)
from maskml.eval.interactive import evaluate_interactive
from maskml.train.data.dataset import EvalDataset
from maskml.train.data.readers import open_source
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.recipes.sam_finetune import SamFinetune


PHOTOS = ("examples", "../shared/data/images")  # real photos for cut-outs and backgrounds, when present


def config(data_root: Path, args) -> OmegaConf:
    return OmegaConf.create({
        "seed": 0,
        "model": {"name": "mobile_sam", "checkpoint": None, "image_size": args.image_size},
        "data": {"root": str(data_root), "layout": "sa1b", "on_error": "skip", "val_root": None,
                 "augment": {"flip": 0.5, "scale": [1.0, 1.0] if args.overfit else [0.8, 1.25], "colour": 0.1}},
        "recipe": {"max_objects": args.objects, "prob_mask": args.prob_mask, "prob_box": args.prob_box,
                   "correction_rounds": args.rounds, "prob_click_from_gt": 0.1, "val_max_clicks": 1,
                   "freeze_batch_norm": args.freeze_batch_norm,
                   "loss": {"focal": 20.0, "dice": 1.0, "iou": 1.0, "object_score": 1.0, "focal_alpha": 0.25,
                            "focal_gamma": 2.0, "supervise_all_iou": True}},
    })


def main() -> None:
    p = training_parser(__doc__, "runs/bench_train_sam", eval_every=5.0)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=40)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--objects", type=int, default=4, help="objects per image per step")
    p.add_argument("--rounds", type=int, default=1, help="correction rounds (the recipe's default is 7)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prob-mask", type=float, default=0.5, help="share of mask prompts (the recipe's 0.5)")
    p.add_argument("--prob-box", type=float, default=0.25, help="share of box prompts (the recipe's 0.25)")
    p.add_argument("--freeze-batch-norm", action=argparse.BooleanOptionalAction, default=False,
                   help="keep BatchNorm statistics fixed (the recipe's default, for pretrained weights; from random "
                        "weights the statistics of the batches train faster)")
    p.add_argument("--overfit", action="store_true", help="one image with one object; stop at 1-click IoU > 0.9")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    data = args.out / "data"
    photos = [p for p in PHOTOS if Path(p).is_dir()]
    if args.overfit:
        synth = SynthConfig(images=1, seed=7, min_objects=1, max_objects=1, width=256, height=192)
        train_root = val_root = data / "overfit"
    else:
        synth = SynthConfig(images=args.train_images, seed=1, width=320, height=240, photos=photos)
        train_root = data / f"train_{args.train_images}"
        val_root = data / f"val_{args.val_images}"
        generate(val_root, SynthConfig(images=args.val_images, seed=2, width=320, height=240, photos=photos))
    generate(train_root, synth)
    cfg = config(train_root / "images", args)
    recipe = SamFinetune(cfg)
    model = recipe.build_model()
    train = recipe.train_dataset()
    # decode each file once: the data set is small, and the CPU time is better spent on training
    train.loader.source.load = functools.lru_cache(maxsize=None)(train.loader.source.load)
    val = EvalDataset(open_source(val_root / "images"), max_images=args.val_images)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.01)
    order: list = []

    def step(n: int, trained_seconds: float, budget: float) -> dict:
        rate = budget_rate(n, trained_seconds, budget, decay_at=1.0)  # warm-up, then constant
        out = recipe_step(recipe, model, optimizer, next_items(train, order, n, args.batch), rate, clip_grad=1.0)
        return {"loss": float(out["loss"].detach()), "iou_first": float(out["iou_first"])}

    def evaluate() -> float:
        model.eval()
        miou = evaluate_interactive(model, val, max_clicks=1).miou(1)
        model.train()
        return miou

    print(f"1-click mIoU on {len(val)} held-out images", flush=True)
    rows = train_on_budget(step, evaluate, args.minutes, args.eval_every, "miou_1", args.log_every,
                           stop=(lambda miou: miou > 0.9) if args.overfit else None)
    untrained, final, steps, minutes = rows[0]["miou_1"], rows[-1]["miou_1"], rows[-1]["step"], rows[-1]["minutes"]
    write_curve(rows, args.out / "curve.csv", {})
    what = "training-image" if args.overfit else "held-out"
    title = (f"mobile_sam from random weights, {args.image_size} px, synthetic data{' (one image)' * args.overfit}\n"
             f"{what} 1-click mIoU {untrained:.3f} -> {final:.3f} in {steps} steps")
    draw_curve(rows, args.out / "curve.png", title, "miou_1",
               f"{what} 1-click mIoU (blue), training loss / max (red); training minutes")
    print(f"untrained {untrained:.4f} -> trained {final:.4f} (+{final - untrained:.4f}) after {steps} steps, "
          f"{minutes:.1f} training min; {args.out / 'curve.csv'}, {args.out / 'curve.png'}", flush=True)
    assert math.isfinite(final)


if __name__ == "__main__":
    main()
