"""Recipes: what a training run trains (model, data, loss, validation, export); the engine runs them all.

A recipe is a Recipe subclass registered under a name with @register_recipe("name"). The recipes shipped with
maskml are the modules of this package (the module name is the recipe name), imported on first use; code of
your own registers its recipes by importing itself before calling the engine. Each recipe has a config
maskml/configs/recipe/<name>.yaml (or one in a folder given with `maskml train --config-dir`).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from maskml.errors import MaskmlError

RECIPES: dict[str, type["Recipe"]] = {}


def register_recipe(name: str):
    def register(cls: type[Recipe]) -> type[Recipe]:
        RECIPES[name] = cls
        cls.name = name
        return cls
    return register


def list_recipes() -> list[str]:
    shipped = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(set(shipped) | set(RECIPES))


def get_recipe(name: str) -> type["Recipe"]:
    if name not in RECIPES and name in list_recipes():
        importlib.import_module(f"{__name__}.{name}")
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list_recipes(), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise MaskmlError(f"unknown recipe {name!r}.{hint} Known recipes: {', '.join(list_recipes()) or 'none'}.")
    return RECIPES[name]


class Recipe:
    """The parts of a training run that depend on what is trained. All methods run on every rank.

    Randomness: the engine gives each training item a "seed" (from cfg.seed, the epoch and the item's index,
    never from the rank), so that N processes compute what one process computes with the same global batch,
    and a resumed run what an uninterrupted one computes. A training dataset that augments defines
    `sample(index, seed)` (the engine then calls it instead of `dataset[index]`); training_step makes one
    torch.Generator per item from item["seed"] for prompt simulation. Nothing should draw from global RNG.
    """

    name = ""
    families: tuple[str, ...] = ()  # zoo families (maskml.zoo ModelEntry.family) this recipe trains; () = any

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.check_model()

    def check_model(self) -> None:
        model_name = OmegaConf.select(self.cfg, "model.name")
        if not self.families or model_name is None:
            return
        from maskml.zoo import get_entry, list_models

        family = get_entry(model_name).family
        if family not in self.families:
            trainable = [m for f in self.families for m in list_models(f)]
            others = [name for name in list_recipes() if family in get_recipe(name).families]
            instead = (f"train it with {' or '.join(f'`maskml train {r} model={model_name}`' for r in others)}"
                       if others else "no recipe trains it yet")
            raise MaskmlError(f"recipe {self.name} does not train {model_name} (a {family} model): {instead}; "
                              f"{self.name} trains {', '.join(trainable)}.")

    def build_model(self) -> nn.Module:
        """The model on CPU, weights from cfg.model (a checkpoint, or seeded random weights)."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def val_dataset(self) -> Dataset | None:
        return None

    def collate(self, items: list) -> Any:
        return items

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """{"loss": scalar tensor (mean over the batch's items), other scalars to log}. `model` is the plain
        model, on the run's device, in train mode (frozen modules in eval mode); under torchrun the engine
        runs this whole method inside DDP's forward, so any use of the model's parts synchronises gradients.
        The engine does the rest: autocast, backward, accumulation, clipping, the optimizer step."""
        raise NotImplementedError

    def validate(self, model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, float]:
        """Metrics over `dataset`; every rank calls it (shard with distributed.shard, gather with
        distributed.all_gather_objects). Runs under torch.no_grad with the model in eval mode."""
        return {}

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW parameter groups; the default follows cfg.optim (see maskml.train.optim)."""
        from maskml.train.optim import param_groups

        return param_groups(model, self.cfg.optim)

    def export(self, model: nn.Module, path: Path) -> None:
        """Write the trained weights to `path` in the family's official release layout."""
        raise NotImplementedError
