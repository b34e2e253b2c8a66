"""One decoding step of a Llama-family decoder, written out over a preallocated KV cache.

A decoding step feeds one token per row through every layer. For a small model on the CPU
the weights dominate (each step streams all of them), and what is left is the bookkeeping
around them: transformers' Llama layer builds a mask, grows the cache with `torch.cat`,
rotates q and k through `rotate_half`, and dispatches ~40 small modules and ops a layer.
On SmolLM2-135M with 8 rows that is about 1 ms a layer a step on top of the matmuls.

:class:`LlamaDecodeStep` computes the same function from the model's own parameters:

    h = x + W_o · Attn(RoPE(W_q n₁(x)), RoPE(W_k n₁(x)), W_v n₁(x))      n(x) = x / rms(x) · g
    x' = h + W_down (silu(W_gate n₂(h)) ⊙ W_up n₂(h))

with the keys and values written into a cache allocated once for the prompt and every
token to come, a pad mask built once, the rotary cos/sin taken once a step from the
model's own rotary embedding (any RoPE scaling it has), and, on the CPU, the weights
prepacked for the batch (:mod:`alignkit.rollout.prepacked`). Its logits match the model's
forward up to float rounding (tests check ~1e-5).

It covers decoders that are exactly this shape: Llama and Qwen2 (their q/k/v biases
included) with plain `nn.Linear` projections, full attention in every layer and no
adapters; :meth:`LlamaDecodeStep.supports` says so, and anything else decodes through the
model's own forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.rollout.prepacked import packed_linear, prepacking_available

# model_type -> the causal-LM class whose layers this step reproduces
_SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


class _LayerWeights(NamedTuple):
    input_norm: torch.Tensor
    q: torch.Tensor
    q_bias: torch.Tensor | None
    k: torch.Tensor
    k_bias: torch.Tensor | None
    v: torch.Tensor
    v_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate: torch.Tensor
    gate_bias: torch.Tensor | None
    up: torch.Tensor
    up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """g ⊙ x / sqrt(mean(x²) + ε), computed in float32 and cast back (Llama's RMSNorm)."""
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one fused kernel
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last dimension: x·cos + rotate_half(x)·sin, where rotate_half(x) =
    (−x₂, x₁) for the halves x = (x₁, x₂). `signed_sin` is (−sin₁, sin₂), so the rotation
    is a swap of the halves (`flip`) times it."""
    half = x.shape[-1] // 2
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


class LlamaDecodeStep:
    """Next-token logits for one new token per row, continuing a prefilled cache.

    Built from the model, the cache its prefill returned (left-padded prompts,
    `attention_mask` [B, P]) and the number of tokens still to come; calling it with the
    tokens just drawn [B] returns the logits of the next ones [B, V]. The prefill's keys
    and values are copied into a cache of P + `max_new_tokens` positions, which each step
    fills one column of.
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """A Llama or Qwen2 causal LM with plain linear projections (no adapters, no
        quantised layers) and full attention in every layer."""
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) not in _SUPPORTED_MODEL_TYPES:
            return False
        decoder = getattr(model, "model", None)
        if type(getattr(model, "lm_head", None)) is not nn.Linear:
            return False
        if not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "layers"):
            return False
        if getattr(config, "hidden_act", None) != "silu":
            return False
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if getattr(attention, "sliding_window", None) is not None:
                return False
            linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
            linears += (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if any(type(linear) is not nn.Linear for linear in linears):
                return False
        return True

    def __init__(
        self, model: nn.Module, cache, attention_mask: torch.Tensor, max_new_tokens: int
    ) -> None:
        config = model.config
        decoder = model.model
        batch, prompt_length = attention_mask.shape
        first = decoder.layers[0].self_attn
        self.batch = batch
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.eps = config.rms_norm_eps
        self.embed = decoder.embed_tokens.weight.detach()
        self.rotary = decoder.rotary_emb
        self.final_norm = decoder.norm.weight.detach()
        packed = prepacking_available(model)
        self.linear = packed_linear if packed else F.linear

        def weight(linear: nn.Linear) -> torch.Tensor:
            w = linear.weight.detach()
            return torch.ops.mkldnn._reorder_linear_weight(w, batch) if packed else w

        self.layers = []
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _LayerWeights(
                    layer.input_layernorm.weight.detach(),
                    weight(attention.q_proj),
                    _bias(attention.q_proj),
                    weight(attention.k_proj),
                    _bias(attention.k_proj),
                    weight(attention.v_proj),
                    _bias(attention.v_proj),
                    weight(attention.o_proj),
                    _bias(attention.o_proj),
                    layer.post_attention_layernorm.weight.detach(),
                    weight(mlp.gate_proj),
                    _bias(mlp.gate_proj),
                    weight(mlp.up_proj),
                    _bias(mlp.up_proj),
                    weight(mlp.down_proj),
                    _bias(mlp.down_proj),
                )
            )
        self.head = weight(model.lm_head)
        self.head_bias = _bias(model.lm_head)

        capacity = prompt_length + max_new_tokens
        like = cache.layers[0].keys
        # keys stored transposed ([B, KV heads, D, positions]): q·Kᵀ then reads them in order
        keys_shape = (batch, self.kv_heads, self.head_dim, capacity)
        values_shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [like.new_zeros(keys_shape) for _ in self.layers]
        self.values = [like.new_zeros(values_shape) for _ in self.layers]
        for i, layer_cache in enumerate(cache.layers):
            self.keys[i][..., :prompt_length] = layer_cache.keys.transpose(-1, -2)
            self.values[i][:, :, :prompt_length] = layer_cache.values
        # additive mask over cache columns: −inf on the prompts' left padding
        self.mask_bias = like.new_zeros(batch, 1, 1, capacity)
        self.mask_bias[:, 0, 0, :prompt_length].masked_fill_(
            attention_mask.to(like.device) == 0, float("-inf")
        )
        self.length = prompt_length  # cache columns filled
        self.positions = attention_mask.to(like.device).long().sum(-1, keepdim=True) - 1

    @torch.no_grad()
    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        batch, heads, kv_heads, head_dim = self.batch, self.heads, self.kv_heads, self.head_dim
        linear, eps = self.linear, self.eps
        column = self.length
        if column >= self.values[0].shape[2]:
            raise RuntimeError(f"the decoding cache holds {column} positions; it is full")
        self.positions = self.positions + 1
        x = F.embedding(token, self.embed)  # [B, hidden]
        cos, sin = self.rotary(x, self.positions)  # [B, 1, D]
        cos = cos.view(batch, 1, head_dim)
        half = head_dim // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), -1).view(batch, 1, head_dim)
        # the attention's 1/√d folded into the queries' rotation
        q_cos, q_signed_sin = cos * self.scaling, signed_sin * self.scaling
        seen = column + 1
        mask_bias = self.mask_bias[..., :seen]
        for w, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            h = rms_norm(x, w.input_norm, eps)
            q = linear(h, w.q, w.q_bias).view(batch, heads, head_dim)
            q = rotate(q, q_cos, q_signed_sin)
            k = linear(h, w.k, w.k_bias).view(batch, kv_heads, head_dim)
            keys[..., column] = rotate(k, cos, signed_sin)
            values[:, :, column] = linear(h, w.v, w.v_bias).view(batch, kv_heads, head_dim)
            # query heads grouped by the key/value head they share (repeat_kv's order)
            q = q.view(batch, kv_heads, heads // kv_heads, head_dim)
            scores = torch.matmul(q, keys[..., :seen])
            probs = torch.softmax(scores + mask_bias, dim=-1, dtype=torch.float32).to(q.dtype)
            attended = torch.matmul(probs, values[:, :, :seen]).view(batch, heads * head_dim)
            x = x + linear(attended, w.o, w.o_bias)
            h = rms_norm(x, w.post_norm, eps)
            gated = F.silu(linear(h, w.gate, w.gate_bias)) * linear(h, w.up, w.up_bias)
            x = x + linear(gated, w.down, w.down_bias)
        self.length = seen
        return linear(rms_norm(x, self.final_norm, eps), self.head, self.head_bias)


__all__ = ["LlamaDecodeStep", "rms_norm", "rotate"]
