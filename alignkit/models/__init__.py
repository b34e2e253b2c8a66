"""Loading policies, reward and critic models, LoRA, and the frozen reference."""

from alignkit.models.heads import ScalarHeadModel, last_token_index, load_scalar_model
from alignkit.models.loading import (
    DEFAULT_MODEL,
    cache_dir,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from alignkit.models.reference import ReferencePolicy, adapters_disabled, apply_lora, is_lora_model
from alignkit.models.tiny import TINY_MODEL_NAME, tiny_random_llama

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL_NAME",
    "ReferencePolicy",
    "ScalarHeadModel",
    "adapters_disabled",
    "apply_lora",
    "cache_dir",
    "is_lora_model",
    "last_token_index",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "resolve_model",
    "tiny_random_llama",
]
