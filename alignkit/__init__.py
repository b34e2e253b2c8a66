"""alignkit: align language models with human preferences.

from alignkit import DPOTrainer, DPOConfig
DPOTrainer(DPOConfig(model="smollm2-135m-instruct", dataset="demo")).train()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Exported lazily (PEP 562): `import alignkit` stays cheap for the CLI's --help.
_EXPORTS = {
    "SFTConfig": "alignkit.train.sft",
    "SFTTrainer": "alignkit.train.sft",
    "RewardConfig": "alignkit.train.reward",
    "RewardTrainer": "alignkit.train.reward",
    "DPOConfig": "alignkit.train.dpo",
    "DPOTrainer": "alignkit.train.dpo",
    "PPOConfig": "alignkit.train.ppo",
    "PPOTrainer": "alignkit.train.ppo",
    "GRPOConfig": "alignkit.train.grpo",
    "GRPOTrainer": "alignkit.train.grpo",
    "load_causal_lm": "alignkit.models",
    "load_scalar_model": "alignkit.models",
    "load_dataset_records": "alignkit.data",
    "UserError": "alignkit.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
