"""The one training loop every recipe runs, alone or under torchrun.

    Trainer(cfg).fit()      # cfg: the composed config of maskml/configs/train.yaml (see maskml.configs)

Order of events in fit(): join the process group, decide between a new run and a resumed one (run folder
checks), build the model (frozen modules, activation checkpointing, DDP), the optimizer and the data stream,
write config.yaml; then per optimizer step: set the scheduled rates, run grad_accum micro-steps (autocast
forward + backward), clip, step; every log_every steps a log.csv row, every val_every steps a validation, every
ckpt_every steps checkpoints/last.pt. At the end: model.pt through the recipe's export, from the best weights
if a best_metric is tracked.

Data order is a pure function of the optimizer step (a seeded permutation per epoch, cut into global batches),
and every item's randomness comes from its own seed (a dataset with a curriculum also gets the item's step):
N processes compute what one process computes with the same global batch, and a resumed run continues exactly
where the checkpoint was taken.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import inspect
import math
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from maskml.configs import config_leaves
from maskml.errors import MaskmlError
from maskml.io.images import atomic_path
from maskml.train import distributed as dist
from maskml.train.checkpoint import load_checkpoint, remove_temporaries, rng_state, save_checkpoint, set_rng_state
from maskml.train.optim import encoder_blocks, lr_factor
from maskml.train.recipes import Recipe, get_recipe

# Settings that may change when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = ("trainer.max_steps", "trainer.resume", "trainer.val_every", "trainer.log_every",
                     "trainer.ckpt_every", "trainer.num_workers", "trainer.tensorboard", "trainer.progress")
MEMORY_OPTIONS = ("trainer.batch_size (with trainer.grad_accum to keep the global batch)", "data.image_size",
                  "trainer.activation_checkpointing=true", "trainer.freeze=[image_encoder]")


# ---------------------------------------------------------------------------------------------- data stream

def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (run seed, epoch, item index): splitmix64's finaliser over their combination."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) >> 1


class StepBatches(Sampler):
    """This rank's micro-batches, as (index, seed, step) triples, for optimizer steps start..stop-1.

    Each epoch is a permutation of the dataset seeded from (seed, epoch), cut into global batches of
    batch_size x world x grad_accum items (the incomplete tail is dropped); micro-step m of rank r takes the
    slice (m * world + r) of its step's global batch. The position in the data is therefore the step number."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.grad_accum, self.seed = n, batch_size, grad_accum, seed
        self.start, self.stop = start, stop
        self.world, self.rank = dist.world_size(), dist.rank()
        self.global_batch = batch_size * self.world * grad_accum
        if n < self.global_batch:
            raise MaskmlError(f"the training data has {n} items, fewer than one global batch of {self.global_batch} "
                              f"(trainer.batch_size x processes x trainer.grad_accum); add data or lower them")
        self.steps_per_epoch = n // self.global_batch

    def __len__(self) -> int:
        return (self.stop - self.start) * self.grad_accum

    def __iter__(self):
        order, order_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(item_seed(self.seed, epoch, -1)))
                order_epoch = epoch
            chunk = order[k * self.global_batch:(k + 1) * self.global_batch].tolist()
            for micro in range(self.grad_accum):
                first = (micro * self.world + self.rank) * self.batch_size
                yield [(i, item_seed(self.seed, epoch, i), step) for i in chunk[first:first + self.batch_size]]


class SeededItems(Dataset):
    """Items of a training dataset fetched by (index, seed, step), with item["seed"] set: dataset.sample(index,
    seed), or dataset.sample(index, seed, step=step) when its sample takes a `step` (a curriculum over the
    optimizer steps, e.g. cutie's max_gap_schedule), or dataset[index] without a sample method."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        sample = getattr(dataset, "sample", None)
        self.takes_step = sample is not None and "step" in inspect.signature(sample).parameters

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, step = key
        if self.takes_step:
            item = self.dataset.sample(index, seed, step=step)
        elif hasattr(self.dataset, "sample"):
            item = self.dataset.sample(index, seed)
        else:
            item = self.dataset[index]
        item["seed"] = seed
        return item


def step_loader(dataset: Dataset, batches: StepBatches, collate_fn, num_workers: int, pin_memory: bool,
                seed: int) -> DataLoader:
    """The training data stream: the micro-batches of `batches`, each item fetched by SeededItems."""
    # The loader's own generator: creating its iterator must not draw from the global random state
    return DataLoader(SeededItems(dataset), batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))


def move_to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------- model set-up

class TrainingStep(nn.Module):
    """The recipe's training_step as a module's forward, so that DDP wraps the whole step (every part of the
    model the recipe calls synchronises its gradients) and the recipe always sees the plain model."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.recipe.training_step(self.model, batch)


def freeze(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """Stop the gradients of the named submodules (dotted paths); return them (they stay in eval mode)."""
    modules = dict(model.named_modules())
    frozen = []
    for name in names:
        if name not in modules or not name:
            children = ", ".join(n for n, _ in model.named_children())
            raise MaskmlError(f"trainer.freeze names {name!r}, which this model does not have; its modules are: "
                              f"{children} (dotted paths reach deeper, e.g. image_encoder.neck)")
        modules[name].requires_grad_(False)
        frozen.append(modules[name])
    return frozen


@contextlib.contextmanager
def _batch_norm_stats_kept(module: nn.Module):
    """Undo the running-statistics update of BatchNorm layers (TinyViT's) in the block's recomputed forward:
    the statistics were updated once already, in the first forward."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _checkpointed_forward(block: nn.Module, forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    contexts = lambda: (contextlib.nullcontext(), _batch_norm_stats_kept(block))  # noqa: E731 - (forward, recompute)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def enable_activation_checkpointing(encoder: nn.Module) -> int:
    """Recompute each encoder block's activations in the backward pass instead of storing them; returns the
    number of blocks. The blocks' forward is wrapped in place, so the module tree and state dict keys stay."""
    blocks = encoder_blocks(encoder)
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)
    return len(blocks)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MaskmlError("trainer.device=cuda but CUDA is not available here; use trainer.device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank())
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise MaskmlError(f"trainer.precision={precision!r}; use auto, fp32, bf16 or fp16")
    return dtypes[precision]


# ---------------------------------------------------------------------------------------------- run folder

def config_differences(old: DictConfig, new: DictConfig) -> list[str]:
    """'key: old -> new' for each leaf that differs, except the settings a resumed run may change."""
    before, after = config_leaves(old), config_leaves(new)
    return [f"{k}: {before.get(k, '(absent)')} -> {after.get(k, '(absent)')}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k) and k not in RESUMABLE_CHANGES]


def plan_run(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a new run; a MaskmlError when the folder holds something that
    is not this run (maskml never overwrites what it did not write)."""
    resume = cfg.trainer.resume
    last = out_dir / "checkpoints" / "last.pt"
    saved = out_dir / "config.yaml"
    if resume not in ("auto", True, False):
        path = Path(str(resume))
        if not path.is_file():
            raise MaskmlError(f"trainer.resume={resume}: no such checkpoint file")
        if out_dir.exists() and any(out_dir.iterdir()) and not last.is_file():
            raise MaskmlError(f"{out_dir} is not empty; to continue from {path}, give an empty or new "
                              f"trainer.out_dir")
        return path
    if last.is_file():
        if resume is False:
            raise MaskmlError(f"{out_dir} already holds a run (checkpoints/last.pt); to continue it use "
                              f"trainer.resume=auto, for a new run choose another trainer.out_dir")
        if saved.is_file():
            differences = config_differences(OmegaConf.load(saved), cfg)
            if differences:
                raise MaskmlError(f"{out_dir} holds a run with another config ({'; '.join(differences[:4])}"
                                  f"{'; ...' if len(differences) > 4 else ''}); continue it with its own settings "
                                  f"or choose another trainer.out_dir")
        return last
    if resume is True:
        raise MaskmlError(f"trainer.resume=true but {out_dir} has no checkpoints/last.pt to continue from")
    if out_dir.exists() and any(out_dir.iterdir()):
        # A run killed before its first checkpoint leaves its own config.yaml (and maybe logs): start it again
        if not (saved.is_file() and not config_differences(OmegaConf.load(saved), cfg)):
            names = ", ".join(sorted(p.name for p in out_dir.iterdir())[:5])
            raise MaskmlError(f"{out_dir} is not empty ({names}) and holds no checkpoint of this run; choose an "
                              f"empty or new trainer.out_dir (maskml does not overwrite files it did not write)")
    return None


class CsvLog:
    """Rows appended (and flushed) one at a time, so a killed run keeps every row it wrote; on resume the rows
    after the checkpoint's step are dropped, since the resumed run writes them again."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
            if resume_step is None:
                rows = []
            kept = [row for row in rows if int(row["step"]) <= (resume_step or 0)]
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                if self.fields and kept:
                    writer = csv.DictWriter(f, self.fields)
                    writer.writeheader()
                    writer.writerows(kept)
            if not kept:
                self.fields = None

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


# ---------------------------------------------------------------------------------------------- the trainer

def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MaskmlError("trainer.tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or set trainer.tensorboard=false; log.csv has the same numbers)") from None
    return SummaryWriter


def check_trainer_config(tr: DictConfig) -> None:
    at_least = {"max_steps": 1, "batch_size": 1, "grad_accum": 1, "log_every": 1, "ckpt_every": 1, "val_every": 0,
                "num_workers": 0}
    for key, low in at_least.items():
        if tr[key] < low:
            raise MaskmlError(f"trainer.{key}={tr[key]}: it must be at least {low}")
    if tr.clip_grad is not None and tr.clip_grad <= 0:
        raise MaskmlError(f"trainer.clip_grad={tr.clip_grad}: give a positive norm, or null for no clipping")
    if tr.best_mode not in ("max", "min"):
        raise MaskmlError(f"trainer.best_mode={tr.best_mode}: use max or min")


class Trainer:
    def __init__(self, cfg: DictConfig, recipe: Recipe | None = None) -> None:
        check_trainer_config(cfg.trainer)
        self.summary_writer = _summary_writer_class() if cfg.trainer.tensorboard else None
        self.cfg = cfg
        self.recipe = recipe if recipe is not None else get_recipe(cfg.recipe_name)(cfg)
        self.out_dir = Path(cfg.trainer.out_dir)

    def fit(self) -> Path:
        """Train to trainer.max_steps (continuing the run in out_dir if there is one); returns model.pt's path."""
        try:
            return self._fit()
        except torch.cuda.OutOfMemoryError:
            raise MaskmlError("out of GPU memory; lower the memory a step needs with "
                              + ", ".join(MEMORY_OPTIONS) + f" (earlier checkpoints in {self.out_dir} are kept)"
                              ) from None

    def _fit(self) -> Path:
        cfg, tr, recipe = self.cfg, self.cfg.trainer, self.recipe
        device = resolve_device(str(tr.device))
        dist.init_distributed("nccl" if device.type == "cuda" else "gloo")
        main = dist.is_main()

        # Rank 0 decides between a new and a resumed run; every rank then raises the same error or loads
        plan = None
        if main:
            try:
                plan = ("resume", plan_run(cfg, self.out_dir))
            except MaskmlError as exc:
                plan = ("error", str(exc))
        kind, value = dist.all_gather_objects(plan)[0]
        if kind == "error":
            raise MaskmlError(value)
        state = load_checkpoint(value) if value is not None else None
        start = state["step"] if state else 0

        # Model: the same seeded weights on every rank (DDP also broadcasts rank 0's at wrapping)
        torch.manual_seed(cfg.seed)
        model = recipe.build_model()
        frozen = freeze(model, list(tr.freeze))
        if tr.activation_checkpointing:
            encoder = getattr(model, "image_encoder", None)
            if encoder is None or not enable_activation_checkpointing(encoder):
                warnings.warn("trainer.activation_checkpointing: this model has no image_encoder blocks to "
                              "checkpoint; ignored", stacklevel=2)
        if state:
            model.load_state_dict(state["model"])
        torch.manual_seed(item_seed(int(cfg.seed), -1, dist.rank()))  # e.g. dropout: other masks on each rank
        model.to(device)
        step_module = TrainingStep(model, recipe)
        ddp = None
        if dist.world_size() > 1:
            ddp = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=bool(tr.find_unused_parameters))
        forward = ddp if ddp is not None else step_module

        groups = recipe.param_groups(model)
        betas = tuple(cfg.optim.get("betas", (0.9, 0.999)))
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=float(cfg.optim.lr), betas=betas,
                                      eps=float(cfg.optim.get("eps", 1e-8)), fused=fused)
        amp_dtype = autocast_dtype(str(tr.precision), device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        trainable = [p for g in groups for p in g["params"]]
        best = {"value": None, "step": None}
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            best = state["best"]

        train_data = recipe.train_dataset()
        val_data = recipe.val_dataset()
        max_steps = int(tr.max_steps)
        batches = StepBatches(len(train_data), int(tr.batch_size), int(tr.grad_accum), int(cfg.seed), start,
                              max_steps)
        stream = iter(step_loader(train_data, batches, recipe.collate, int(tr.num_workers), device.type == "cuda",
                                  int(cfg.seed)))

        # Everything is set up: only now the run folder is written (a run that could not start leaves nothing)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "checkpoints").mkdir(exist_ok=True)
            remove_temporaries(self.out_dir / "checkpoints")
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                OmegaConf.save(cfg, tmp)
        log = CsvLog(self.out_dir / "log.csv", start if state else None) if main else None
        val_log = CsvLog(self.out_dir / "val.csv", start if state else None) if main else None
        board = self.summary_writer(str(self.out_dir / "tensorboard"), purge_step=start) if main and tr.tensorboard \
            else None
        bar = tqdm(total=max_steps, initial=start, desc=f"train {cfg.recipe_name}", dynamic_ncols=True,
                   disable=not (main and tr.progress))

        def train_mode() -> None:
            model.train()
            for module in frozen:
                module.eval()

        def validate(step: int) -> None:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                metrics = recipe.validate(model, val_data, device)
            train_mode()
            key = tr.best_metric
            if key is not None and key not in metrics:
                raise MaskmlError(f"trainer.best_metric={key} is not among the validation metrics "
                                  f"({', '.join(metrics) or 'none'})")
            if not main:
                return
            val_log.write({"step": step, **{k: _fmt(v) for k, v in metrics.items()}})
            if board:
                for k, v in metrics.items():
                    board.add_scalar(f"val/{k}", v, step)
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if key is None:
                return
            value = float(metrics[key])
            better = best["value"] is None or (value > best["value"] if tr.best_mode == "max" else value < best["value"])
            if better:
                best.update(value=value, step=step)
                save_checkpoint(self.out_dir / "checkpoints" / "best.pt",
                                {"step": step, "model": model.state_dict(), "best": dict(best)})

        if state:  # last, so that nothing done since the checkpoint's step draws from the restored states
            if len(state["rng"]) == dist.world_size():
                set_rng_state(state["rng"][dist.rank()])
            elif main:
                warnings.warn(f"resuming with {dist.world_size()} processes instead of {len(state['rng'])}: "
                              f"global random states are not restored (per-item data seeds still are)", stacklevel=2)
        train_mode()
        accum = int(tr.grad_accum)
        window: dict[str, torch.Tensor] = {}  # sums over the steps since the last log row
        window_steps, window_seconds = 0, 0.0
        for step in range(start, max_steps):
            step_start = time.perf_counter()
            factor = lr_factor(step, max_steps, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            totals: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                batch = move_to(next(stream), device)
                # DDP averages the gradients across ranks once, after the last micro-step
                sync = ddp is None or micro == accum - 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), \
                        torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = forward(batch)
                scaler.scale(out["loss"] / accum).backward()
                for k, v in out.items():
                    totals[k] = totals.get(k, 0) + v.detach().float() / accum
            if tr.clip_grad is not None:
                scaler.unscale_(optimizer)
                totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainable, float(tr.clip_grad)).detach()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window_seconds += time.perf_counter() - step_start

            for k, v in totals.items():
                window[k] = window.get(k, 0) + v
            window_steps += 1
            bar.update(1)
            if main and tr.progress:
                bar.set_postfix(loss=f"{totals['loss'].item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                refresh=False)
            if done % int(tr.log_every) == 0 or done == max_steps:
                names = sorted(window)
                means = dist.all_reduce_mean(torch.stack([torch.as_tensor(window[k]) for k in names]) / window_steps)
                row = {"step": done, "lr": _fmt(max(g["lr"] for g in optimizer.param_groups)),
                       **{k: _fmt(v) for k, v in zip(names, means.tolist())},
                       "steps_per_s": _fmt(window_steps / window_seconds)}  # training only: no validation, saving
                if not math.isfinite(float(row["loss"])):
                    raise MaskmlError(f"the loss became {row['loss']} by step {done}; lower optim.lr (and keep "
                                      f"trainer.clip_grad on); the last checkpoint in {self.out_dir} is kept")
                if main:
                    log.write(row)
                    if board:
                        for k in names + ["lr"]:
                            board.add_scalar(f"train/{k}", float(row[k]), done)
                window, window_steps, window_seconds = {}, 0, 0.0
            if val_data is not None and ((tr.val_every and done % int(tr.val_every) == 0) or done == max_steps):
                validate(done)
            if done % int(tr.ckpt_every) == 0 or done == max_steps:
                rngs = dist.all_gather_objects(rng_state())
                if main:
                    save_checkpoint(self.out_dir / "checkpoints" / "last.pt", {
                        "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rngs, "best": dict(best),
                        "world_size": dist.world_size()})
        bar.close()
        if board:
            board.close()

        model_path = self.out_dir / "model.pt"
        if main:
            best_path = self.out_dir / "checkpoints" / "best.pt"
            if tr.best_metric is not None and best_path.is_file():
                model.load_state_dict(load_checkpoint(best_path)["model"])
            with atomic_path(model_path) as tmp:
                recipe.export(model, tmp)
        dist.barrier()
        return model_path
