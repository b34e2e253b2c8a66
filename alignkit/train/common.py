"""What every trainer does before its first step: load the model, the data, and split it."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import demo_path, load_dataset_records, tokenize_records, train_eval_split
from alignkit.errors import UserError
from alignkit.models import apply_lora, load_causal_lm
from alignkit.train.checkpoint import default_save_model
from alignkit.train.train_config import TrainConfig

DEMO_DATASET = "demo"


def dataset_path(name: str | None, format: str) -> str:
    """A data path from the config; `demo` names the packaged demo file of `format`."""
    if name is None:
        raise UserError("no dataset given: set `dataset` in the config or pass --dataset PATH")
    if name == DEMO_DATASET:
        return str(demo_path(format))
    if not Path(name).expanduser().exists():
        raise UserError(f"dataset not found: {name}")
    return str(Path(name).expanduser())


def load_train_eval(cfg: TrainConfig, format: str) -> tuple[list[Any], list[Any]]:
    """Validated records for training and evaluation (a held-out split if no eval_dataset)."""
    records = load_dataset_records(dataset_path(cfg.dataset, format), format)
    if cfg.eval_dataset:
        return records, load_dataset_records(dataset_path(cfg.eval_dataset, format), format)
    return train_eval_split(records, cfg.eval_fraction, seed=cfg.seed)


def tokenize(
    records: list[Any], tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig, **kwargs
) -> list[dict[str, Any]]:
    return tokenize_records(records, tokenizer, cfg.max_length, cfg.max_prompt_length, **kwargs)


def policy_and_tokenizer(
    cfg: TrainConfig, model: nn.Module | None, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model a trainer was given, or the one its config names (loaded with LoRA if asked)."""
    if model is None:
        return load_policy(cfg)
    if tokenizer is None:
        raise ValueError("pass the tokenizer together with the model")
    return model, tokenizer


def load_policy(cfg: TrainConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model to train, with LoRA adapters when `use_lora` is on."""
    model, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
    if cfg.use_lora:
        model = apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            top_layers=cfg.lora_top_layers,
        )
    return model, tokenizer


# ----------------------------------------------------------------------------- evaluation


def batches(features: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(features), batch_size):
        yield features[start : start + batch_size]


def evaluate_in_batches(
    features: Sequence[dict[str, Any]],
    collator: Callable[[Sequence[dict[str, Any]]], dict[str, Any]],
    metrics_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Example-weighted means of per-example metrics over a whole eval set, overall and per group.

    `metrics_fn(batch)` returns {name: tensor [B]} with one value per example; an example's
    `group` adds `name/<group>` figures, plus `<first metric>/group_gap` (best − worst group).
    """
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for chunk in batches(features, batch_size):
        batch = send_to_device(collator(chunk), device)
        per_example = metrics_fn(batch)
        groups = [f.get("group") for f in chunk]
        for name, values in per_example.items():
            for value, group in zip(values.tolist(), groups, strict=True):
                sums[name] += value
                counts[name] += 1
                if group is not None:
                    sums[f"{name}/{group}"] += value
                    counts[f"{name}/{group}"] += 1
    means = {name: sums[name] / counts[name] for name in sums}
    headline = next(iter(per_example)) if features else None
    group_values = [v for k, v in means.items() if headline and k.startswith(f"{headline}/")]
    if len(group_values) > 1:
        means[f"{headline}/group_gap"] = max(group_values) - min(group_values)
    return means


# ----------------------------------------------------------------------------- saving


def save_policy_hook(tokenizer: PreTrainedTokenizerBase) -> Callable[[nn.Module, Path], None]:
    """Checkpoint hook: the model's weights (adapters only under LoRA) plus the tokenizer."""

    def save(model: nn.Module, directory: Path) -> None:
        default_save_model(model, directory)
        tokenizer.save_pretrained(directory)

    return save


def export_merged_lora(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> None:
    """Write a LoRA policy as one plain model folder (adapters merged), loadable by name.

    The adapter files a checkpoint hook left in ``directory`` move to ``directory/adapter``:
    beside ``config.json`` they would make transformers load the base model the adapter
    names instead of the merged weights here."""
    directory = Path(directory)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    adapter_files = [p for p in directory.glob("adapter_*") if p.is_file()]
    if adapter_files:
        (directory / "adapter").mkdir(exist_ok=True)
        for path in adapter_files:
            path.replace(directory / "adapter" / path.name)
