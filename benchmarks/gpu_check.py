"""The training engine on a CUDA GPU: the training tests on the GPU, then short fine-tunes of sam2.1_hiera_b+ at
1024 px with batch 1 (bf16 autocast), printing steps per second and peak GPU memory.

    python benchmarks/gpu_check.py                  # tests + fine-tunes
    python benchmarks/gpu_check.py --skip-tests     # the fine-tune figures only
    python benchmarks/gpu_check.py --steps 40

Without CUDA it prints one line and exits with status 1 (nothing was checked).

Tests: tests/test_train_engine.py, test_train_resume.py and test_train_distributed.py with
MASKML_TRAIN_TEST_DEVICE=cuda: single-process runs train on the GPU (fp32, so exact comparisons stay exact);
runs of 2 processes use NCCL when there are 2 GPUs, else gloo on the CPU. The kill -9 resume test of
sam_finetune is left out on the GPU: bilinear interpolation's backward accumulates with atomics there, so two
CUDA runs differ in the last bits (exact resume is a CPU promise; on the GPU it resumes from the same state).
Fine-tunes: sam_finetune from seeded random weights on synthetic images (written once to --data), each
configuration in the same process after a reset of the peak-memory counter: all modules trainable with and
without activation checkpointing, and the default fine-tune (image encoder frozen). it/s is measured over the
steps after the first log window (warm-up excluded), from the run's own log.csv.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT

import torch

CONFIGURATIONS = [
    ("all trainable, activation checkpointing", ["trainer.freeze=[]", "trainer.activation_checkpointing=true"]),
    ("all trainable", ["trainer.freeze=[]", "trainer.activation_checkpointing=false"]),
    ("image encoder frozen (default)", ["trainer.activation_checkpointing=false"]),
]


def run_tests() -> int:
    env = {**os.environ, "MASKML_TRAIN_TEST_DEVICE": "cuda", "PYTHONPATH": str(ROOT)}
    tests = ["tests/test_train_engine.py", "tests/test_train_resume.py", "tests/test_train_distributed.py"]
    command = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
               "-k", "not sam_finetune_killed"]
    print("$ MASKML_TRAIN_TEST_DEVICE=cuda " + " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def fine_tune(name: str, overrides: list[str], data: Path, out_dir: Path, steps: int) -> None:
    from maskml.configs import compose_train_config
    from maskml.train.engine import Trainer

    log_every = max(1, steps // 4)
    cfg = compose_train_config("sam_finetune", [
        "model=sam2.1_hiera_b+", "model.image_size=1024", f"data.root={data}", "trainer.batch_size=1",
        "trainer.precision=bf16", "trainer.device=cuda", f"trainer.max_steps={steps}",
        f"trainer.log_every={log_every}", f"trainer.out_dir={out_dir}", "trainer.progress=false", *overrides])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        Trainer(cfg).fit()
    except Exception as exc:  # noqa: BLE001 - report the configuration that failed (e.g. out of memory) and go on
        print(f"{name:42s} failed: {type(exc).__name__}: {exc}", flush=True)
        return
    peak = torch.cuda.max_memory_allocated() / 2**30
    with open(out_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[1:] or rows  # the first window holds the warm-up (allocations, kernel selection)
    rate = sum(float(r["steps_per_s"]) for r in rows) / len(rows)
    print(f"{name:42s} {rate:6.2f} it/s   peak GPU memory {peak:6.2f} GiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per fine-tune")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "maskml_gpu_check_synth")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}); nothing was checked")
        return 1
    print(f"gpu_check on {torch.cuda.get_device_name()} ({torch.cuda.device_count()} GPU), torch {torch.__version__}")
    status = 0 if args.skip_tests else run_tests()

    from maskml.train.data.synth import SynthConfig, generate

    generate(args.data, SynthConfig(images=16, seed=0, width=1024, height=768), progress=False)
    print(f"\nsam_finetune sam2.1_hiera_b+, 1024 px, batch 1, bf16, {args.steps} steps, seeded random weights:")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(CONFIGURATIONS):
            fine_tune(name, overrides, args.data / "images", Path(tmp) / f"run{i}", args.steps)
    return status


if __name__ == "__main__":
    sys.exit(main())
