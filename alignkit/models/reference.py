"""LoRA adapters and the frozen reference policy π_ref.

With LoRA on, π_ref is the very same network with its adapter switched off, so the
reference costs no second copy of the weights. Without LoRA it is a frozen deep copy of
the policy taken before training starts.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str = "all-linear",
    top_layers: int | None = None,
) -> nn.Module:
    """Wrap `model` with trainable LoRA adapters (peft); the base weights are frozen.

    With `top_layers`, only the top N decoder layers get adapters: nothing below them then
    needs a gradient, so the backward pass stops at the lowest adapted layer."""
    from peft import LoraConfig, get_peft_model

    layers = None
    if top_layers is not None:
        total = model.config.num_hidden_layers
        layers = list(range(max(0, total - top_layers), total))
    config = LoraConfig(
        layers_to_transform=layers,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules)
        if not isinstance(target_modules, str)
        else target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep this module importable without it
        return False
    return isinstance(getattr(model, "module", model), PeftModel)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run `model` as its base: LoRA adapters off inside the block (a no-op without LoRA)."""
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if is_lora_model(inner):
        with inner.disable_adapter():
            yield
    else:
        yield


class ReferencePolicy:
    """The frozen π_ref a trainer scores sequences with.

    Call it like the model (`reference(input_ids=..., attention_mask=...)`); it runs under
    `torch.no_grad()` and returns the model output (logits).
    """

    def __init__(self, policy: nn.Module, reference: nn.Module | None = None):
        self.policy = policy
        if reference is not None:
            self.model = reference.eval().requires_grad_(False)
        elif is_lora_model(policy):
            self.model = None  # the policy itself, adapters off
        else:
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    @property
    def shares_policy_weights(self) -> bool:
        return self.model is None

    @property
    def network(self) -> nn.Module:
        """The module that computes π_ref: the frozen copy, or the policy itself."""
        return self.policy if self.model is None else self.model

    @torch.no_grad()
    def __call__(self, **inputs):
        if self.model is not None:
            return self.model(**inputs)
        was_training = self.policy.training
        self.policy.eval()  # no dropout in the reference pass
        try:
            with adapters_disabled(self.policy):
                return self.policy(**inputs)
        finally:
            self.policy.train(was_training)
