"""The packaged Hydra configs of training and evaluation, composed with Hydra's compose API (so they work from an
installed package, not only from a source checkout).

train.yaml is the root of a training run; each sub-folder is a config group (recipe, model, data, optim, schedule,
trainer; teacher and student for the distillation recipes, the model options under other names) whose YAML files
are its options. Extra folders of the same layout (`config_dirs`) add options or replace packaged ones of the same
name.
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskml.errors import MaskmlError

TRAIN_GROUPS = ("recipe", "model", "data", "optim", "schedule", "trainer", "teacher", "student")


def _group_dirs(group: str, config_dirs: tuple[Path, ...]) -> list:
    return [resources.files(__name__) / group, *(Path(d) / group for d in config_dirs)]


def group_options(group: str, config_dirs: tuple[Path, ...] = ()) -> list[str]:
    """The option names of a config group (its YAML files), packaged and from `config_dirs`."""
    names = set()
    for folder in _group_dirs(group, config_dirs):
        if folder.is_dir():
            names.update(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return sorted(names)


def _first_line(message: str) -> str:
    # Hydra appends the whole config search path to "not found" errors; the options list before it is what helps
    return message.split("\nConfig search path:")[0].strip().replace(":\n\t", ": ").replace("\n\t", ", ").replace(
        "\n\n", " ").replace("\n", " ")


def _unknown_key_hint(message: str, overrides: list[str], cfg_without: DictConfig | None) -> str:
    """For "Could not override 'a.b'": the keys that do exist at a."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" not in message or "." not in key:
            continue
        parent, leaf = key.rsplit(".", 1)
        node = OmegaConf.select(cfg_without, parent) if cfg_without is not None else None
        if isinstance(node, DictConfig):
            valid = list(node.keys())
            close = difflib.get_close_matches(leaf, valid, n=1)
            hint = f" Did you mean {parent}.{close[0]}?" if close else ""
            return f"{hint} Valid keys in {parent}: {', '.join(valid)}."
    return ""


def config_leaves(cfg: DictConfig) -> dict[str, object]:
    """{dotted key: value} of every leaf (a list counts as one value)."""
    def walk(node, prefix: str):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(walk(OmegaConf.to_container(cfg), ""))


def _type_errors(cfg: DictConfig, defaults: DictConfig) -> list[str]:
    """'key=value (expected ...)' for each value whose type does not fit the default's (null always fits: off)."""
    given = config_leaves(cfg)
    errors = []
    for key, default in config_leaves(defaults).items():
        value = given.get(key)
        if value is None or default is None:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            errors.append(f"{key}={value} (expected true or false)")
        elif isinstance(default, int) and not isinstance(default, bool) and (
                not isinstance(value, int) or isinstance(value, bool)):
            errors.append(f"{key}={value} (expected an integer)")
        elif isinstance(default, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            errors.append(f"{key}={value} (expected a number)")
    return errors


def compose_config(config_name: str, overrides: list[str] = (), config_dirs: tuple[Path, ...] = ()) -> DictConfig:
    """The config `config_name`.yaml of this package composed with Hydra overrides (GROUP=OPTION, KEY=VALUE),
    interpolations resolved; any mistake in the overrides is one MaskmlError naming the valid choices."""
    overrides = list(overrides)
    search = []
    if config_dirs:
        search.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in config_dirs) + "]")
    with initialize_config_module(config_module=__name__, version_base=None):
        try:
            cfg = compose(config_name, overrides=search + overrides)
            OmegaConf.resolve(cfg)
            # the types to expect: those of the same options' defaults (group choices kept, key overrides not)
            choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
            errors = _type_errors(cfg, compose(config_name, overrides=search + choices)) if overrides else []
        except (HydraException, OmegaConfBaseException) as exc:
            message = _first_line(str(exc))
            hint = ""
            if "Could not override" in message:
                try:  # the config without the failing override shows which keys exist
                    kept = [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") not in message]
                    hint = _unknown_key_hint(message, overrides, compose(config_name, overrides=search + kept))
                except (HydraException, OmegaConfBaseException):
                    pass
            raise MaskmlError(f"bad config: {message}{hint}") from None
    if errors:
        raise MaskmlError(f"bad config: {'; '.join(errors)}")
    return cfg


def compose_train_config(recipe: str, overrides: list[str] = (), config_dirs: tuple[Path, ...] = ()) -> DictConfig:
    """The composed config of `maskml train RECIPE OVERRIDES...`."""
    return compose_config("train", [f"recipe={recipe}", f"recipe_name={recipe}", *overrides], config_dirs)
