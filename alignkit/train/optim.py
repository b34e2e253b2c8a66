"""Optimizer and learning-rate schedule from a :class:`~alignkit.train.train_config.TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from alignkit.train.train_config import TrainConfig


def build_optimizer(
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
    cfg: TrainConfig,
    *,
    module_lrs: Mapping[torch.nn.Module, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (ndim < 2).

    `module_lrs` gives the parameters of some submodules their own peak learning rate (PPO's
    critic); every other parameter gets ``cfg.learning_rate``.
    """
    if isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = [p for p in model_or_params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (every parameter has requires_grad=False)")
    rate_of = {id(p): lr for m, lr in (module_lrs or {}).items() for p in m.parameters()}
    groups = []
    for lr in dict.fromkeys([cfg.learning_rate, *rate_of.values()]):
        mine = [p for p in params if rate_of.get(id(p), cfg.learning_rate) == lr]
        decay = [p for p in mine if p.ndim >= 2]
        no_decay = [p for p in mine if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr": lr})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=fused_adamw_supported(params),
    )


def fused_adamw_supported(params: list[torch.nn.Parameter]) -> bool:
    """The fused AdamW kernel (one pass over each tensor instead of several) takes
    floating-point tensors on one CPU or CUDA device."""
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
    )


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    """``warmup_steps`` if set, else ``ceil(warmup_ratio * total_steps)``."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_multiplier(step: int, *, warmup: int, total: int, kind: str) -> float:
    """The factor on the peak learning rate for the update after ``step`` completed updates.

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup`` updates, then ``kind`` decay:
    ``cosine`` and ``linear`` reach 0 at ``total``; ``constant`` stays at 1.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then ``cfg.lr_scheduler`` decay over ``total_steps`` optimizer updates.

    Step it once per optimizer update; its state_dict loads with weights_only=True.
    """
    warmup = warmup_steps_for(cfg, total_steps)
    kind = cfg.lr_scheduler

    def fn(step: int) -> float:
        return lr_multiplier(step, warmup=warmup, total=total_steps, kind=kind)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
