"""`maskml train RECIPE [group=option] [key=value ...]`: run a training recipe (see maskml.train).

The same command runs distributed: `torchrun --nproc_per_node N -m maskml train RECIPE ...`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from maskml.configs import TRAIN_GROUPS, compose_train_config, group_options


def _epilog() -> str:
    from maskml.train.recipes import list_recipes

    lines = ["recipes: " + ", ".join(sorted(set(list_recipes()) | set(group_options("recipe")))), "",
             "config groups (pick an option with GROUP=OPTION):"]
    lines += [f"  {group:9s} {', '.join(group_options(group))}" for group in TRAIN_GROUPS if group != "recipe"]
    lines += ["", "keys: any key of the composed config, e.g. trainer.max_steps=2000 trainer.batch_size=4 "
              "optim.lr=1e-4 trainer.out_dir=runs/a; --print-config shows them all.",
              "distributed: torchrun --nproc_per_node N -m maskml train RECIPE ...",
              "The run folder (trainer.out_dir) gets config.yaml, log.csv, val.csv, checkpoints/last.pt and best.pt, "
              "and model.pt (the official release layout). Running the same command again continues the run."]
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model with a recipe (Hydra config, torchrun-ready)",
        description="Train a model with a recipe. The config is composed from packaged Hydra YAML groups; "
                    "override options and keys on the command line.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="the recipe to run (listed below)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides: GROUP=OPTION or KEY=VALUE (e.g. model=mobile_sam trainer.max_steps=100)")
    parser.add_argument("--config-dir", action="append", type=Path, default=[], metavar="DIR",
                        help="a folder of extra config options, laid out like the groups (DIR/data/mine.yaml ...)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.set_defaults(func=run, on_interrupt="run the same command again to continue from the last checkpoint")


def run(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from maskml.train import distributed
    from maskml.train.engine import Trainer
    from maskml.train.recipes import get_recipe

    recipe_class = get_recipe(args.recipe)
    cfg = compose_train_config(args.recipe, args.overrides, tuple(args.config_dir))
    if args.print_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return
    try:
        model_path = Trainer(cfg, recipe_class(cfg)).fit()
        if distributed.is_main():
            print(f"trained weights: {model_path}")
    finally:
        distributed.cleanup()
