"""A tiny recipe that exercises every part of the training engine in a second: a 3-block MLP with an
`image_encoder` (layer decay, freezing, activation checkpointing), seeded augmentation, validation, export.

Run as a script it is the `maskml` command with this recipe registered (for torchrun and kill tests):
    python tests/train_toy.py train toy --config-dir tests/fixtures/train_configs trainer.out_dir=...
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from maskml.train import distributed
from maskml.train.recipes import Recipe, register_recipe

CONFIGS = Path(__file__).parent / "fixtures" / "train_configs"
# The device the training tests train on: cpu, unless benchmarks/gpu_check.py asks for cuda
DEVICE = os.environ.get("MASKML_TRAIN_TEST_DEVICE", "cpu")


def device_override(processes: int = 1) -> str:
    """trainer.device for a run of `processes` processes: NCCL needs a GPU per process, else gloo on the CPU."""
    cuda = DEVICE == "cuda" and torch.cuda.device_count() >= processes
    return f"trainer.device={'cuda' if cuda else 'cpu'}"


class ToyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(self.norm(x)))


class ToyEncoder(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(ToyBlock(width) for _ in range(depth))
        self.neck = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.neck(x)


class ToyModel(nn.Module):
    def __init__(self, width: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.image_encoder = ToyEncoder(width, depth)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.image_encoder(x)))[:, 0]


class ToyData(Dataset):
    """Item i: 8 inputs drawn from seed i, target sin(sum); sample() adds noise drawn from the item's seed."""

    def __init__(self, items: int, noise: float, offset: int = 0) -> None:
        self.items, self.noise, self.offset = items, noise, offset

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int) -> dict:
        x = torch.randn(8, generator=torch.Generator().manual_seed(self.offset + index))
        return {"x": x, "y": torch.sin(x.sum()), "name": f"item{index}"}

    def sample(self, index: int, seed: int) -> dict:
        item = self[index]
        item["x"] = item["x"] + self.noise * torch.randn(8, generator=torch.Generator().manual_seed(seed))
        return item


@register_recipe("toy")
class ToyRecipe(Recipe):
    def build_model(self) -> nn.Module:
        return ToyModel(self.cfg.model.width, self.cfg.model.depth, self.cfg.recipe.dropout)

    def train_dataset(self) -> Dataset:
        return ToyData(self.cfg.data.size, self.cfg.data.noise)

    def val_dataset(self) -> Dataset:
        return ToyData(self.cfg.data.val_size, 0.0, offset=10_000)

    def collate(self, items: list) -> dict:
        return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        time.sleep(self.cfg.recipe.step_seconds)
        error = model(batch["x"]) - batch["y"]
        return {"loss": (error**2).mean(), "abs_error": error.abs().mean()}

    def validate(self, model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, float]:
        errors = []
        for i in distributed.shard(len(dataset)):
            item = dataset[i]
            errors.append(float((model(item["x"][None].to(device))[0] - item["y"]) ** 2))
        errors = [e for part in distributed.all_gather_objects(errors) for e in part]
        mse = sum(errors) / len(errors)
        return {"mse": mse, "score": -mse}

    def export(self, model: nn.Module, path: Path) -> None:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)


def toy_command(out_dir: Path, overrides: list[str], processes: int = 1, recipe: str = "toy") -> list[str]:
    """The command line of a training run in a fresh interpreter: this script for the toy recipe, `-m maskml`
    for the shipped ones; under torchrun (`python -m torch.distributed.run`) with 2+ processes."""
    program = [str(Path(__file__))] if recipe == "toy" else ["-m", "maskml"]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                     str(free_port())]
    return [*launcher, *program, "train", recipe, "--config-dir", str(CONFIGS), f"trainer.out_dir={out_dir}",
            device_override(processes), *overrides]


def sam_finetune_tiny(tmp: Path) -> list[str]:
    """Overrides that make the real sam_finetune recipe take about a second a step here: MobileSAM from its
    seeded random weights at 64 px, on 4 synthetic images written to tmp/synth (once)."""
    from maskml.train.data.synth import SynthConfig, generate

    root = tmp / "synth"
    if not root.is_dir():
        generate(root, SynthConfig(images=4, seed=0, width=96, height=64, max_objects=3), progress=False)
    return [f"data.root={root / 'images'}", "model.image_size=64", "recipe.max_objects=2",
            "recipe.correction_rounds=2", "trainer.num_workers=0", "trainer.log_every=1", "trainer.progress=false",
            "trainer.precision=fp32"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    # one thread per process: the same arithmetic in every run (and no oversubscription of small machines)
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}


def run_training(out_dir: Path, overrides: list[str], processes: int = 1, recipe: str = "toy") -> None:
    """Run toy_command to its end; fail with the end of its error output if it fails."""
    import subprocess

    result = subprocess.run(toy_command(out_dir, overrides, processes, recipe), env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def read_log(path: Path) -> list[dict[str, str]]:
    """log.csv / val.csv rows without the timing column (which differs from run to run)."""
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "steps_per_s"} for row in csv.DictReader(f)]


if __name__ == "__main__":
    from maskml.cli import main

    sys.exit(main(sys.argv[1:]))
