"""Proof that distill_encoder distils: a SAM ViT-B teacher from its deterministic random weights (seeded, as
`teacher.checkpoint=null` builds it) into a MobileSAM student from its own random weights, on synthetic images,
through the real engine and embedding cache, within a wall-clock budget. Measured on held-out images before
training and --evaluations times during it: the student's embedding MSE to the teacher, and the IoU between the
student's and the teacher's mask for one click at each object's centre (the student has the teacher's decoder,
as distill_encoder sets it up). Also the time of one epoch with the cache (the student only) and without it
(recipe.cache=false: the teacher runs in every step), measured back to back between filling the cache and the
learning run (outside its budget); the cached epoch's rate sizes the learning run (cosine schedule to its end).

    python benchmarks/bench_distill.py --minutes 30 --out runs/bench_distill

Writes epochs.csv, curve.csv and curve.png into --out (and the runs: run/, epoch_*/, cache/).
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import _common  # noqa: F401 - this checkout first on sys.path
import cv2
import numpy as np
import torch

from maskml.configs import compose_train_config
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.engine import Trainer
from maskml.train.recipes import get_recipe


def load1() -> float:
    return os.getloadavg()[0]


def overrides(args, train_root: Path, val_root: Path, out_dir: Path, cache_dir: Path, **extra) -> list[str]:
    items = {"teacher.image_size": args.image_size, "data.root": train_root, "data.val_root": val_root,
             "data.val_max_images": args.val_images, "recipe.cache_dir": cache_dir, "trainer.out_dir": out_dir,
             "trainer.batch_size": args.batch, "trainer.num_workers": 0, "trainer.progress": "false",
             "trainer.log_every": 5, "trainer.val_every": 0, "trainer.ckpt_every": 200, "optim.lr": args.lr,
             "schedule.warmup_steps": 20, "recipe.val_max_objects": 4, **extra}
    return [f"teacher={args.teacher}", "student=mobile_sam",
            *[f"{k}={v}" for k, v in items.items()]]


def draw_curve(rows: list[dict], path: Path, title: str) -> None:
    """Held-out (red) and training (orange) embedding MSE, log scale, and 1-click student-teacher IoU (blue)
    against minutes."""
    w, h, m = 820, 500, 70
    img = np.full((h, w, 3), 255, np.uint8)
    t_max = max(r["minutes"] for r in rows) or 1.0
    cv2.rectangle(img, (m, m), (w - m, h - m), (0, 0, 0), 1)
    mse = [r["embedding_mse"] for r in rows] + [r["train_loss"] for r in rows if r["train_loss"] == r["train_loss"]]
    lo, hi = np.log10(min(mse)) - 0.1, np.log10(max(mse)) + 0.1
    x_of = lambda t: int(m + t / t_max * (w - 2 * m))  # noqa: E731
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):  # IoU axis, right
        y = int(h - m - v * (h - 2 * m))
        cv2.line(img, (m, y), (w - m, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.2f}", (w - m + 6, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 60, 0), 1)
    for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):  # MSE axis, left, decades
        for mult in (1, 2, 5):
            v = np.log10(mult) + e
            if lo <= v <= hi:
                y = int(h - m - (v - lo) / (hi - lo) * (h - 2 * m))
                cv2.putText(img, f"{mult * 10.0 ** e:g}", (6, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 200), 1)
    for k in range(0, int(t_max) + 1, max(1, int(t_max) // 6)):
        cv2.putText(img, f"{k}", (x_of(k) - 5, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    mse_pts = np.array([[x_of(r["minutes"]), h - m - (np.log10(r["embedding_mse"]) - lo) / (hi - lo) * (h - 2 * m)]
                        for r in rows], np.int32)
    iou_pts = np.array([[x_of(r["minutes"]), h - m - r["click_iou"] * (h - 2 * m)] for r in rows], np.int32)
    trained = [r for r in rows if r["train_loss"] == r["train_loss"]]
    train_pts = np.array([[x_of(r["minutes"]), h - m - (np.log10(r["train_loss"]) - lo) / (hi - lo) * (h - 2 * m)]
                          for r in trained], np.int32)
    if len(train_pts):
        cv2.polylines(img, [train_pts], False, (0, 140, 255), 1)
    for pts, colour in ((mse_pts, (0, 0, 200)), (iou_pts, (200, 60, 0))):
        cv2.polylines(img, [pts], False, colour, 2)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 4, colour, -1)
    for i, line in enumerate(title.split("\n")):
        cv2.putText(img, line, (m, 22 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "embedding MSE held-out (red) / training (orange), log, left; 1-click student/teacher IoU "
                "(blue, right); minutes", (8, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


class TimedValidation:
    """The recipe's validate, with the wall-clock minute and the machine load of each call recorded."""

    def __init__(self, recipe, start: float) -> None:
        self.recipe, self.start, self.times = recipe, start, []
        self.validate = recipe.validate
        recipe.validate = self

    def __call__(self, *args, **kwargs):
        metrics = self.validate(*args, **kwargs)
        self.times.append(((time.perf_counter() - self.start) / 60, load1()))
        print(f"{self.times[-1][0]:.1f} min: held-out MSE {metrics['embedding_mse']:.4f}, 1-click IoU "
              f"{metrics['click_iou']:.4f} (load {load1():.1f})", flush=True)
        return metrics


def epoch_time(args, train_images: Path, val_images: Path, cached: bool) -> dict:
    """One epoch from a fresh run, with the cache (the student only) or without (the teacher in every step):
    the engine's own timing of the training steps (log.csv), set-up and export excluded; over --timing-steps
    steps when an epoch is longer, scaled to the epoch."""
    epoch_steps = args.train_images // args.batch
    steps = min(epoch_steps, args.timing_steps)
    run_dir = args.out / f"epoch_{'cached' if cached else 'teacher_online'}"
    cfg = compose_train_config("distill_encoder", overrides(args, train_images, val_images, run_dir, args.out / "cache",
                                                            **{"trainer.max_steps": steps, "data.val_root": "null",
                                                               "recipe.cache": str(cached).lower()}))
    recipe = get_recipe("distill_encoder")(cfg)
    recipe.teacher()  # built before the clock starts in both cases
    before = load1()
    Trainer(cfg, recipe).fit()
    with open(run_dir / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    done = [0] + [int(r["step"]) for r in log]
    seconds = sum((b - a) / float(r["steps_per_s"]) for a, b, r in zip(done, done[1:], log)) * epoch_steps / steps
    print(f"one epoch ({epoch_steps} steps of {args.batch} images, {steps} timed) {'with' if cached else 'without'} "
          f"the cache: {seconds:.1f} s (load {before:.1f} -> {load1():.1f})", flush=True)
    return {"cache": cached, "steps": epoch_steps, "timed_steps": steps, "batch": args.batch,
            "epoch_seconds": round(seconds, 1), "load1_before": round(before, 2), "load1_after": round(load1(), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_distill"))
    p.add_argument("--minutes", type=float, default=30.0, help="budget of the learning run, cache filling and "
                                                               "evaluations included")
    p.add_argument("--evaluations", type=int, default=10, help="held-out evaluations during the run")
    p.add_argument("--teacher", default="sam_vit_b")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--timing-steps", type=int, default=16, help="steps timed for the epoch times (scaled to an "
                                                                     "epoch when it has more)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a CPU shared with other work, more threads wait on each other)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "run").exists():
        raise SystemExit(f"{args.out / 'run'} exists: give a new --out")

    train_root, val_root = args.out / "data" / "train", args.out / "data" / "val"
    if not train_root.is_dir():
        generate(train_root, SynthConfig(images=args.train_images, seed=1, width=160, height=120), progress=False)
        generate(val_root, SynthConfig(images=args.val_images, seed=2, width=160, height=120), progress=False)
    train_images, val_images = train_root / "images", val_root / "images"

    start = time.perf_counter()
    cfg = compose_train_config("distill_encoder", overrides(args, train_images, val_images, args.out / "run",
                                                            args.out / "cache"))
    recipe = get_recipe("distill_encoder")(cfg)
    recipe.train_dataset()  # builds the teacher and fills the cache
    fill_minutes = (time.perf_counter() - start) / 60
    print(f"cache of {args.train_images} teacher embeddings filled in {fill_minutes:.2f} min (load {load1():.1f})",
          flush=True)

    # the epoch times, outside the budget; the cached one also sizes the learning run
    paused = time.perf_counter()
    timing = [epoch_time(args, train_images, val_images, cached) for cached in (True, False)]
    start += time.perf_counter() - paused
    with open(args.out / "epochs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(timing[0]))
        writer.writeheader()
        writer.writerows(timing)

    timed = TimedValidation(recipe, start)
    model = recipe.build_model().eval()
    with torch.no_grad():
        untrained = timed(model, recipe.val_dataset(), torch.device("cpu"))
    # steps that fit the rest of the budget at the measured rate, less a margin for the evaluations and load
    seconds_per_step = timing[0]["epoch_seconds"] / timing[0]["steps"]
    left = args.minutes * 60 - (time.perf_counter() - start)
    steps = max(args.evaluations, int(0.8 * left / seconds_per_step))
    cfg.trainer.max_steps = steps
    cfg.trainer.val_every = max(1, steps // args.evaluations)
    print(f"learning run: {steps} steps (cosine rate from {args.lr:g}, {seconds_per_step:.2f} s a step measured)",
          flush=True)
    Trainer(cfg, recipe).fit()

    with open(args.out / "run" / "val.csv", newline="") as f:
        vals = list(csv.DictReader(f))
    with open(args.out / "run" / "log.csv", newline="") as f:
        log = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
    rows = [{"minutes": round(timed.times[0][0], 2), "step": 0, "train_loss": float("nan"),
             "embedding_mse": untrained["embedding_mse"], "click_iou": untrained["click_iou"],
             "load1": round(timed.times[0][1], 2)}]
    for (minutes, load), val in zip(timed.times[1:], vals):
        step = int(val["step"])
        logged = [k for k in log if k <= step]  # the training MSE logged last before this evaluation
        rows.append({"minutes": round(minutes, 2), "step": step,
                     "train_loss": log[max(logged)] if logged else float("nan"),
                     "embedding_mse": float(val["embedding_mse"]), "click_iou": float(val["click_iou"]),
                     "load1": round(load, 2)})
    with open(args.out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first, last = rows[0], rows[-1]
    title = (f"distill_encoder: {args.teacher} (random weights) -> mobile_sam, {args.image_size} px, "
             f"{args.train_images} images, batch {args.batch}, {steps} steps\nheld-out MSE "
             f"{first['embedding_mse']:.3f} -> {last['embedding_mse']:.4f} "
             f"({first['embedding_mse'] / last['embedding_mse']:.1f}x; training {last['train_loss']:.3f}), 1-click IoU "
             f"{first['click_iou']:.3f} -> "
             f"{last['click_iou']:.3f} in {last['minutes']:.1f} min")
    draw_curve(rows, args.out / "curve.png", title)
    print(title.replace("\n", "; "), flush=True)


if __name__ == "__main__":
    main()
