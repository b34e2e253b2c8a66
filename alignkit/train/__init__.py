"""The training engine and a thin trainer per algorithm."""

from __future__ import annotations

import importlib
from typing import Any

# Exported lazily (PEP 562) so that importing alignkit.train.train_config does not import accelerate.
_EXPORTS = {
    "TrainConfig": "alignkit.train.train_config",
    "Engine": "alignkit.train.engine",
    "FitResult": "alignkit.train.engine",
    "StepResult": "alignkit.train.engine",
    "TrainState": "alignkit.train.engine",
    "NonFiniteLossError": "alignkit.train.engine",
    "CheckpointManager": "alignkit.train.checkpoint",
    "RunDirectory": "alignkit.train.run_dir",
    "EpochBatchSampler": "alignkit.train.sampler",
    "build_optimizer": "alignkit.train.optim",
    "build_scheduler": "alignkit.train.optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignkit.train' has no attribute {name!r}")
