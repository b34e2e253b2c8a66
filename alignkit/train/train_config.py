"""``TrainConfig``: the options every trainer takes. Trainers subclass it and add their own.

Defaults suit a ~135M model fine-tuned on a CPU: small per-device batches, a little
accumulation, frequent logging, a checkpoint every 100 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignkit.options import ConfigValueError, option
from alignkit.train.time_budget import parse_duration


@dataclass
class TrainConfig:
    """Common training options (see :mod:`alignkit.options` for how they are loaded)."""

    # what to train on
    model: str = option("smollm2-135m-instruct", "Model name or local path to start from.")
    dataset: str | None = option(None, "Training data: a file path or a dataset name.")
    eval_dataset: str | None = option(
        None, "Evaluation data; if unset, eval_fraction of the training data is held out."
    )
    eval_fraction: float = option(
        0.05,
        "Fraction of the training data held out for evaluation when no eval_dataset (0 = none).",
        min=0,
        lt=1,
    )
    output_dir: str = option("runs/run", "Run folder: config, metrics, events, checkpoints.")

    # how long
    max_steps: int | None = option(
        None, "Optimizer steps to train for; none = num_epochs passes over the data.", min=1
    )
    num_epochs: int = option(1, "Passes over the training data (when max_steps is none).", min=1)
    time_budget: str | None = option(
        None,
        "Wall-clock budget (90s, 10m, 1.5h): after a few measured steps the run fixes its "
        "length to end within it — more than one epoch if the time allows, at most max_steps "
        "when set — and lays the schedule out over that length.",
    )
    seed: int = option(42, "Random seed (model init, data order, sampling).", min=0)

    # optimizer and schedule
    learning_rate: float = option(2e-5, "Peak learning rate.", gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = option(
        "cosine", "Learning-rate decay after warm-up."
    )
    warmup_steps: int = option(0, "Warm-up steps; 0 = use warmup_ratio.", min=0)
    warmup_ratio: float = option(
        0.03, "Warm-up as a fraction of all steps (if warmup_steps is 0).", min=0, max=1
    )
    weight_decay: float = option(
        0.0, "AdamW weight decay (not applied to biases and norms).", min=0
    )
    adam_beta1: float = option(0.9, "AdamW beta1.", min=0, lt=1)
    adam_beta2: float = option(0.999, "AdamW beta2.", min=0, lt=1)
    adam_epsilon: float = option(1e-8, "AdamW epsilon.", gt=0)
    batch_size: int = option(4, "Examples per device per micro-batch.", min=1)
    gradient_accumulation_steps: int = option(2, "Micro-batches per optimizer step.", min=1)
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0 = no clipping).", min=0)

    # bookkeeping
    eval_every: int = option(100, "Evaluate every N optimizer steps (0 = only at the end).", min=0)
    save_every: int = option(
        100, "Checkpoint every N optimizer steps (0 = only at the end).", min=0
    )
    keep_last_checkpoints: int = option(
        2, "Checkpoints kept on disk (older ones are deleted).", min=1
    )
    log_every: int = option(10, "Write metrics every N optimizer steps.", min=1)
    resume: bool = option(False, "Continue from the latest checkpoint in output_dir.")
    max_consecutive_nonfinite: int = option(
        5,
        "Stop after more than this many NaN/Inf losses in a row (each one skips its step).",
        min=0,
    )
    report_to_tensorboard: bool = option(
        True, "Also write TensorBoard events to output_dir/tensorboard."
    )

    # sequences and precision
    max_length: int = option(512, "Maximum tokens per example (prompt + response).", min=8)
    max_prompt_length: int | None = option(
        None,
        "Maximum prompt tokens (longer prompts are truncated); none = half of max_length.",
        min=1,
    )
    dtype: Literal["float32", "bfloat16"] = option(
        "float32", "Weights dtype (bfloat16 halves memory)."
    )
    gradient_checkpointing: bool = option(
        False,
        "Recompute each layer's activations in the backward pass: less memory, ~1/3 more compute.",
    )
    keep_host_memory: bool = option(
        True,
        "On a CPU with glibc: keep memory freed between steps for the next step instead of "
        "returning it to the kernel (fewer page faults, faster steps; the process keeps its "
        "high-water mark).",
    )
    sparse_embedding_grads: bool = option(
        True,
        "On one process: take the input embedding's gradient as the rows a batch used, "
        "instead of a dense copy of the whole table at every backward (less peak memory; "
        "the same gradients).",
    )

    # LoRA
    use_lora: bool = option(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = option(16, "LoRA rank.", min=1)
    lora_alpha: float = option(32.0, "LoRA scaling alpha.", gt=0)
    lora_dropout: float = option(0.05, "LoRA dropout.", min=0, lt=1)
    lora_target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "Module names LoRA adapts (comma-separated)."
    )
    lora_top_layers: int | None = option(
        None,
        "Adapt only the top N decoder layers (none = all). The backward pass then stops at "
        "the lowest adapted layer: a cheaper step, for style and format usually enough.",
        min=1,
    )

    def __post_init__(self) -> None:
        # A default that depends on another option follows it (Python API and loader alike).
        if self.max_prompt_length is None:
            self.max_prompt_length = self.max_length // 2

    def validate(self) -> None:
        """Cross-field checks; raises ConfigValueError(key, message)."""
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget)
            except ValueError as exc:
                raise ConfigValueError("time_budget", str(exc)) from None
        if self.max_prompt_length >= self.max_length:
            raise ConfigValueError(
                "max_prompt_length",
                f"must be smaller than max_length ({self.max_length}), got {self.max_prompt_length}",
            )
        if self.use_lora and not self.lora_target_modules:
            raise ConfigValueError(
                "lora_target_modules", "needs at least one module when use_lora is on"
            )
