"""Exact resume: a training run killed with SIGKILL at an arbitrary moment, started again with the same command,
logs the very losses of a run that was never interrupted and ends with the same weights (CPU, one thread per
process: the arithmetic is deterministic, so the comparison is exact)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from train_toy import read_log, run_training as run, sam_finetune_tiny, subprocess_env, toy_command
from maskml.train.checkpoint import load_checkpoint

# Dropout draws from the global random state (restored per rank); augmentation from per-item seeds (data position)
TOY = ["trainer.max_steps=12", "trainer.batch_size=2", "trainer.ckpt_every=3", "trainer.val_every=4",
       "recipe.dropout=0.3"]


def kill_mid_run(out_dir: Path, overrides: list[str], processes: int = 1, recipe: str = "toy",
                 after_rows: int = 5) -> None:
    """Start the run and SIGKILL it (all its processes) once log.csv has `after_rows` rows: past a checkpoint,
    with logged steps after it that the resumed run must compute again."""
    process = subprocess.Popen(toy_command(out_dir, overrides, processes, recipe), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    log = out_dir / "log.csv"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) > after_rows):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run logged too few steps in 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (out_dir / "model.pt").exists()


def assert_same_run(resumed: Path, reference: Path) -> None:
    assert read_log(resumed / "log.csv") == read_log(reference / "log.csv")
    if (reference / "val.csv").is_file():
        assert read_log(resumed / "val.csv") == read_log(reference / "val.csv")
    final, expected = torch.load(resumed / "model.pt"), torch.load(reference / "model.pt")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert [p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    slow = [*TOY, "recipe.step_seconds=0.1"]  # long enough steps to land the kill mid-run
    run(tmp_path / "reference", slow)
    kill_mid_run(tmp_path / "run", slow)
    killed_at = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"]
    assert 3 <= killed_at < 12
    run(tmp_path / "run", slow)  # the same command continues the run
    assert_same_run(tmp_path / "run", tmp_path / "reference")


def test_two_process_run_killed_resumes_with_every_rank_state(tmp_path):
    # dropout differs between the ranks: only a per-rank restore of the random states gives the same losses
    slow = [*TOY, "trainer.batch_size=1", "recipe.step_seconds=0.1"]
    run(tmp_path / "reference", slow, processes=2)
    kill_mid_run(tmp_path / "run", slow, processes=2)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    run(tmp_path / "run", slow, processes=2)
    assert_same_run(tmp_path / "run", tmp_path / "reference")


def test_sam_finetune_killed_resumes_exactly(tmp_path):
    common = [*sam_finetune_tiny(tmp_path), "trainer.max_steps=7", "trainer.ckpt_every=2", "trainer.batch_size=2"]
    run(tmp_path / "reference", common, recipe="sam_finetune")
    kill_mid_run(tmp_path / "run", common, recipe="sam_finetune", after_rows=3)
    run(tmp_path / "run", common, recipe="sam_finetune")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
