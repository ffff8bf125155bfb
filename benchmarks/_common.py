"""What the benchmark scripts share: timing, memory, the machine line, worker processes, official checkouts.

Importing it puts this checkout first on sys.path, so a script run as `python benchmarks/x.py` times the
maskml next to it, not whichever copy is installed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# what maskml.runtime.keep_freed_memory() sets with mallopt, as glibc environment variables, to give the
# official code the same allocator behaviour in "official+malloc" rows
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def synchronize(device: str = "cpu") -> None:
    """Wait for the work queued on `device` (a no-op on the CPU, where every call returns when it is done)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def check_device(device: str) -> None:
    """Exit with one line when `device` cannot be used here."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SystemExit(f"--device {device}: choose cpu, cuda or cuda:N")


def times_ms(fn, runs: int, device: str = "cpu") -> list[float]:
    """Wall time of each of `runs` calls of fn, after one warm-up call; queued GPU work is waited for inside
    each timing."""
    fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def median_ms(fn, runs: int, device: str = "cpu") -> float:
    return statistics.median(times_ms(fn, runs, device))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int, device: str = "cpu") -> str:
    import torch

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = f", GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})" if device.startswith("cuda") else ""
    return (f"torch {torch.__version__}, {threads} threads, CPU: {cpu_name()} ({os.cpu_count()} cores visible), "
            f"load average {load} (1/5/15 min){gpu}")


def square_test_image(size: int = 1024):
    """examples/truck.jpg resized to size x size, H x W x 3 uint8 RGB."""
    import numpy as np
    from PIL import Image

    return np.array(Image.open(ROOT / "examples" / "truck.jpg").convert("RGB").resize((size, size), Image.BILINEAR))


def run_worker(cmd: list[str], label: str, env: dict | None = None) -> dict:
    """Run a worker process (its own peak memory) and return the JSON object it printed last."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_checkout(src: str | Path, names: tuple[str, ...], package: str) -> Path:
    """The official checkout holding `package`: `src` itself, or one of `names` inside it."""
    src = Path(src)
    for root in (src, *(src / n for n in names)):
        if (root / package).is_dir():  # with or without __init__.py (Cutie's is a namespace package)
            return root
    raise SystemExit(f"no {package} checkout at {src} (nor {', '.join(names)} inside it)")


def draw_curve(rows: list[dict], path: Path, title: str, metric: str, legend: str,
               baseline: float | None = None) -> None:
    """A learning curve as a PNG (drawn with OpenCV): rows' `metric` (a 0-1 score; NaN rows skipped) in blue
    with points, their training "loss" scaled to its maximum in red, against "minutes"; `baseline` (a score to
    beat) as a grey line; `title` lines on top, `legend` below."""
    import cv2
    import numpy as np

    w, h, m = 800, 500, 60
    img = np.full((h, w, 3), 255, np.uint8)
    t_max = max(r["minutes"] for r in rows) or 1.0
    cv2.rectangle(img, (m, m), (w - m, h - m), (0, 0, 0), 1)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(h - m - v * (h - 2 * m))
        cv2.line(img, (m, y), (w - m, y), (220, 220, 220), 1)
        cv2.putText(img, f"{v:.2f}", (8, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for k in range(0, int(t_max) + 1, max(1, int(t_max) // 6)):
        x = int(m + k / t_max * (w - 2 * m))
        cv2.putText(img, f"{k}", (x - 5, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    if baseline is not None:
        y = int(h - m - baseline * (h - 2 * m))
        cv2.line(img, (m, y), (w - m, y), (128, 128, 128), 1)
    evals = [r for r in rows if r[metric] == r[metric]]
    pts = np.array([[m + r["minutes"] / t_max * (w - 2 * m), h - m - r[metric] * (h - 2 * m)] for r in evals],
                   np.int32)
    cv2.polylines(img, [pts], False, (200, 60, 0), 2)
    for p in pts:
        cv2.circle(img, tuple(int(c) for c in p), 4, (200, 60, 0), -1)
    losses = [r for r in rows if r.get("loss", math.nan) == r.get("loss", math.nan)]
    if losses:
        top = max(r["loss"] for r in losses)
        lp = np.array([[m + r["minutes"] / t_max * (w - 2 * m), h - m - r["loss"] / top * (h - 2 * m)]
                       for r in losses], np.int32)
        cv2.polylines(img, [lp], False, (0, 0, 200), 1)
    for i, line in enumerate(title.split("\n")):
        cv2.putText(img, line, (m, 22 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, legend, (m, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def budget_rate(step: int, trained_seconds: float, budget_seconds: float, decay_at: float, warmup: int = 20) -> float:
    """The training benchmarks' learning-rate factor: a linear warm-up over `warmup` steps, then 1, then 0.1
    from `decay_at` of the time budget on (the official step schedules' last drop, e.g. Cutie's 100000 of
    125000 steps; decay_at >= 1: never)."""
    return min(1.0, (step + 1) / warmup) * (0.1 if trained_seconds >= decay_at * budget_seconds else 1.0)


def training_parser(doc: str, out: str, eval_every: float) -> argparse.ArgumentParser:
    """The training benchmarks' command line, with the options they share: --out, the budget (--minutes,
    --eval-every), --threads, --log-every."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--minutes", type=float, default=30.0, help="training budget (evaluations not counted)")
    p.add_argument("--eval-every", type=float, default=eval_every, help="training minutes between evaluations")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a CPU shared with other work, more threads wait on each other)")
    p.add_argument("--log-every", type=int, default=10, help="steps between printed losses")
    return p


def recipe_step(recipe, model, optimizer, items: list, rate: float, clip_grad: float) -> dict:
    """One optimizer step of a recipe's training_step on `items`, every group's rate at `rate` x its base rate
    (the training benchmarks' loop; the engine, maskml.train.engine, does the same per step with its schedule)."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * rate
    out = recipe.training_step(model, items)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_([q for g in optimizer.param_groups for q in g["params"]], clip_grad)
    optimizer.step()
    return out


def train_on_budget(step, evaluate, minutes: float, eval_every: float, metric: str, log_every: int = 10,
                    stop=None) -> list[dict]:
    """The training benchmarks' loop, timed by training alone (evaluations are extra wall time). evaluate() -> a
    score runs before training, every `eval_every` minutes of training and at the end of `minutes`; between them
    step(n, trained_seconds, budget_seconds) runs training step n and returns its figures ({"loss": ..., ...}),
    printed every `log_every` steps and averaged into the next row. `stop(score)` true ends training early.
    Returns the rows: minutes, step, the averaged figures, `metric`."""
    budget = minutes * 60
    rows = [{"minutes": 0.0, "step": 0, metric: evaluate()}]
    print(f"before training: {metric} {rows[0][metric]:.4f}", flush=True)
    trained, n, since, next_eval = 0.0, 0, [], eval_every * 60
    while True:
        done = trained >= budget or (stop is not None and stop(rows[-1][metric]))
        if n > rows[-1]["step"] and (done or trained >= next_eval):
            means = {k: sum(f[k] for f in since) / len(since) for k in since[0]}
            rows.append({"minutes": trained / 60, "step": n, **means, metric: evaluate()})
            since = []
            print(f"{trained / 60:.1f} training min, step {n}: {metric} {rows[-1][metric]:.4f}", flush=True)
            while next_eval <= trained:
                next_eval += eval_every * 60
            continue
        if done:
            return rows
        tick = time.perf_counter()
        figures = step(n, trained, budget)
        trained += time.perf_counter() - tick
        n += 1
        since.append(figures)
        if n % log_every == 0:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
            print(f"step {n} ({trained / 60:.1f} training min): {shown}", flush=True)


def write_curve(rows: list[dict], path: Path, notes: dict[str, float]) -> None:
    """train_on_budget's rows as CSV (a figure a row lacks, e.g. the loss before training, is NaN), then each
    of `notes` (e.g. a baseline's score) as a "# name,value" line."""
    fields = list(dict.fromkeys(k for row in reversed(rows) for k in row))  # the last row has every figure
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="nan")
        writer.writeheader()
        writer.writerows(rows)
        f.writelines(f"# {name},{value:.4f}\n" for name, value in notes.items())


def next_items(dataset, order: list, step: int, batch: int, seed_stride: int = 1000) -> list:
    """The training benchmarks' batches: `batch` samples of `dataset` in an order reshuffled each epoch (from
    the step), each drawn with the seed (step * seed_stride + index); `order` is the epoch's remaining order."""
    import torch

    items = []
    for _ in range(batch):
        if not order:
            order.extend(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(step)).tolist())
        index = order.pop()
        items.append(dataset.sample(index, seed=step * seed_stride + index))
    return items
