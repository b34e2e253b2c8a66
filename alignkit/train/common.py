"""What every trainer does before its first step: load the model, the data, and split it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from alignkit.data import demo_path, load_dataset_records, tokenize_records, train_eval_split
from alignkit.errors import UserError
from alignkit.models import apply_lora, load_causal_lm
from alignkit.train.config import TrainConfig

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
        )
    return model, tokenizer
