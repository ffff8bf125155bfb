"""AdamW parameter groups (layer-wise rate decay in the image encoder, no weight decay on norms and biases)
and the learning-rate schedules, as factors of each group's base rate."""
from __future__ import annotations

import math

from omegaconf import DictConfig
from torch import nn

from maskml.errors import MaskmlError


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The image encoder's repeated blocks in forward order: the items of every ModuleList named `blocks`
    (SAM's ViT, TinyViT's stages, Hiera). Layer-wise rate decay and activation checkpointing work on these."""
    return [block for name, module in encoder.named_modules()
            if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, nn.ModuleList) for block in module]


def encoder_layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of each encoder parameter: 0 for what precedes the first block (patch embedding, positions), i for
    block i (1-based), and for parameters between blocks (e.g. TinyViT's patch merging) the block before them;
    what follows the last block (the neck) gets the top id, returned second."""
    block_of = {}
    for i, block in enumerate(encoder_blocks(encoder), start=1):
        for param in block.parameters():
            block_of[id(param)] = i
    ids, current = {}, 0
    named = list(encoder.named_parameters())
    last_block_param = max((k for k, (_, p) in enumerate(named) if id(p) in block_of), default=-1)
    top = len(encoder_blocks(encoder)) + 1
    for k, (name, param) in enumerate(named):
        current = block_of.get(id(param), current)
        ids[name] = top if k > last_block_param else current
    return ids, top


def param_groups(model: nn.Module, optim: DictConfig) -> list[dict]:
    """AdamW groups over the trainable parameters: optim.lr, except under model.image_encoder where the rate is
    optim.encoder_lr (default lr) x optim.layer_decay ** (top - depth); 1-D tensors get no weight decay.
    Each group keeps its rate before scheduling as "base_lr"."""
    lr = float(optim.lr)
    encoder_lr = float(optim.encoder_lr) if optim.get("encoder_lr") is not None else lr
    layer_decay = float(optim.get("layer_decay", 1.0))
    encoder = getattr(model, "image_encoder", None)
    layer_ids, top = encoder_layer_ids(encoder) if isinstance(encoder, nn.Module) else ({}, 0)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("image_encoder."):
            rate = encoder_lr * layer_decay ** (top - layer_ids[name[len("image_encoder."):]])
        else:
            rate = lr
        decay = 0.0 if param.ndim <= 1 else float(optim.weight_decay)
        group = groups.setdefault((rate, decay), {"params": [], "lr": rate, "base_lr": rate, "weight_decay": decay})
        group["params"].append(param)
    if not groups:
        raise MaskmlError("no trainable parameters: trainer.freeze froze the whole model; unfreeze a module "
                          "(e.g. trainer.freeze=[image_encoder]) or freeze nothing (trainer.freeze=[])")
    return list(groups.values())


def lr_factor(step: int, max_steps: int, schedule: DictConfig) -> float:
    """Multiplier of every group's base rate at optimizer step `step` (0-based)."""
    warmup = int(schedule.get("warmup_steps", 0))
    if step < warmup:
        return (step + 1) / warmup
    name = schedule.name
    if name == "constant":
        return 1.0
    if name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        floor = float(schedule.get("min_lr_ratio", 0.0))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "step":
        milestones = [m * max_steps if m < 1 else m for m in schedule.milestones]
        return float(schedule.gamma) ** sum(step >= m for m in milestones)
    raise MaskmlError(f"unknown learning-rate schedule {name!r}; schedule=cosine, step or constant")
