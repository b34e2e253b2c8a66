"""One decoding step of a Llama-family decoder, written out over a preallocated KV cache.

A decoding step feeds one token per row through every layer. For a small model on the CPU
the weights dominate (each step streams all of them), and what is left is the bookkeeping
around them: transformers' Llama layer builds a mask, grows the cache with `torch.cat`,
rotates q and k through `rotate_half`, and dispatches ~40 small modules and ops a layer,
each with its own overhead on top of the matmuls.

:class:`LlamaDecodeStep` computes the same function from the model's own parameters:

    h = x + W_o · Attn(RoPE(W_q n₁(x)), RoPE(W_k n₁(x)), W_v n₁(x))      n(x) = x / rms(x) · g
    x' = h + W_down (silu(W_gate n₂(h)) ⊙ W_up n₂(h))

with the keys and values written into a cache allocated once for the prompt and every
token to come (keys transposed, so q·Kᵀ reads them in order), a pad mask built once, the
rotary cos/sin taken once a step from the model's own rotary embedding (any RoPE scaling
it has) and applied to the query and key heads together, W_q, W_k and W_v stacked into one
product, and, on the CPU, the weights prepacked for the batch
(:mod:`alignkit.rollout.prepacked`) with the residual additions, the SiLU and the gate's
product done by the GEMM's epilogue: 16 ops a layer where the plain version has 26. Its
logits match the model's forward up to float rounding (tests check ~1e-5); what it saves
is measured in benchmarks/README.md.

It covers decoders that are exactly this shape: Llama and Qwen2 (their q/k/v biases
included) with `nn.Linear` projections or peft LoRA adapters on them (each adapted weight
is merged for decoding, W + s·BA, which is the same function), full attention in every
layer; :meth:`LlamaDecodeStep.supports` says so, and anything else decodes through the
model's own forward.

Each decoding call prepares the weights (merged, stacked, prepacked) anew, a trainer's
rollout after its optimizer step included; inside :func:`frozen_weights` a model's are
prepared once and reused, for the many batches of an evaluation. With
`dtype=torch.bfloat16` the step multiplies in bfloat16 (half the bytes a step streams;
AVX-512 BF16 raises the products' rate): the tokens are then drawn from a slightly
different distribution than the float32 policy's, which is why it is an option and the
trainers' log-probabilities always come from their own float32 forward.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from alignkit.rollout.decoding import last_positions
from alignkit.rollout.prepacked import (
    epilogues_available,
    pack_weight,
    packed_linear,
    packed_linear_add,
    packed_linear_mul,
    packed_linear_silu,
    prepacking_available,
)

# transformers model types whose decoder layers are exactly the function computed here
_SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


class _LayerWeights(NamedTuple):
    input_norm: torch.Tensor
    qkv: torch.Tensor  # W_q, W_k and W_v stacked: one product for the three
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate: torch.Tensor
    gate_bias: torch.Tensor | None
    up: torch.Tensor
    up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class _Linears(NamedTuple):
    """y = xWᵀ + b with the elementwise step that follows it in the layer, fused into the
    product where oneDNN's prepacked kernel can (its epilogue), or as separate ops."""

    prepare: Callable[[torch.Tensor], torch.Tensor]  # W -> the form the products take
    plain: Callable  # (x, W, b) -> y
    silu: Callable  # (x, W, b) -> silu(y)
    add: Callable  # (x, other, W, b) -> y + other
    mul: Callable  # (x, other, W, b) -> y ⊙ other


UNFUSED = _Linears(
    prepare=lambda weight: weight,
    plain=F.linear,
    silu=lambda x, w, b: F.silu(F.linear(x, w, b)),
    add=lambda x, other, w, b: F.linear(x, w, b) + other,
    mul=lambda x, other, w, b: F.linear(x, w, b) * other,
)


def prepacked(rows: int) -> _Linears:
    """Products with weights reordered once for `rows` rows, epilogues fused."""
    return _Linears(
        prepare=lambda weight: pack_weight(weight, rows),
        plain=packed_linear,
        silu=packed_linear_silu,
        add=packed_linear_add,
        mul=packed_linear_mul,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """g ⊙ x / sqrt(mean(x²) + ε), computed in float32 and cast back (Llama's RMSNorm)."""
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one fused kernel
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * x32.to(dtype)).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last dimension: x·cos + rotate_half(x)·sin, where rotate_half(x) =
    (−x₂, x₁) for the halves x = (x₁, x₂). `signed_sin` is (−sin₁, sin₂), so the rotation
    is a swap of the halves (`flip`) times it."""
    half = x.shape[-1] // 2
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


def _lora_parts(linear: nn.Module) -> tuple[nn.Linear, list[str]] | None:
    """A peft LoRA layer's base linear map and the adapters active on it (empty when the
    adapters are disabled or already merged); None for anything else."""
    base = getattr(linear, "base_layer", None)
    if type(base) is not nn.Linear or not hasattr(linear, "get_delta_weight"):
        return None
    if getattr(linear, "disable_adapters", False) or getattr(linear, "merged", False):
        return base, []
    active = [a for a in linear.active_adapters if a in linear.lora_A]
    return base, active


def _plain_or_lora(linear: nn.Module) -> bool:
    """An `nn.Linear`, or a peft LoRA layer on one without DoRA or a LoRA bias (its
    dropout is off: decoding runs in eval mode)."""
    if type(linear) is nn.Linear:
        return True
    parts = _lora_parts(linear)
    if parts is None:
        return False
    _, active = parts
    return not any(
        linear.use_dora.get(a, False) or getattr(linear, "lora_bias", {}).get(a, False)
        for a in active
    )


def effective_weight(linear: nn.Module) -> torch.Tensor:
    """The weight the layer multiplies by: W, or for a LoRA layer W + Σ_a s_a·B_a A_a over
    its active adapters (peft's own delta, so scaling and fan-in order are peft's)."""
    if type(linear) is nn.Linear:
        return linear.weight.detach()
    base, active = _lora_parts(linear)
    weight = base.weight.detach()
    for adapter in active:
        weight = weight + linear.get_delta_weight(adapter).detach()
    return weight


def _bias(linear: nn.Module) -> torch.Tensor | None:
    parts = _lora_parts(linear)
    linear = parts[0] if parts is not None else linear
    return None if linear.bias is None else linear.bias.detach()


def _stacked(*linears: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights of linear maps of the same input stacked by output, and their biases
    (zeros for a map without one; None when none has one)."""
    weights = [effective_weight(linear) for linear in linears]
    biases = [_bias(linear) for linear in linears]
    if all(b is None for b in biases):
        return torch.cat(weights), None
    return torch.cat(weights), torch.cat(
        [w.new_zeros(w.shape[0]) if b is None else b for w, b in zip(weights, biases, strict=True)]
    )


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class _Prepared(NamedTuple):
    layers: list[_LayerWeights]
    head: torch.Tensor
    head_bias: torch.Tensor | None
    linears: _Linears


# models whose weights a caller has declared frozen -> their prepared weights, by settings
_FROZEN: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Prepared]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def frozen_weights(*models: nn.Module) -> Iterator[None]:
    """Inside the block the models' weights do not change, so decoding prepares them
    (merges, stacks, prepacks) once and every batch reuses them: an evaluation, the
    feedback's sampling, a server's answers. Outside, each decoding call prepares them
    anew, because nothing tells it reliably that they changed (torch's fused AdamW updates
    parameters in place without bumping their version counters)."""
    added = [m for m in (_causal_lm(m) for m in models) if m not in _FROZEN]
    for model in added:
        _FROZEN[model] = {}
    try:
        yield
    finally:
        for model in added:
            _FROZEN.pop(model, None)


def _prepare(model: nn.Module, dtype: torch.dtype, rows: int) -> _Prepared:
    """The layers' weights as the step multiplies them, reused while the model is frozen."""
    packed = prepacking_available(model) and epilogues_available()
    kept = _FROZEN.get(model)
    key = (dtype, packed, tuple(_adapter_switches(model)))
    if kept is not None and key in kept:
        return kept[key]
    prepared = _prepare_weights(model, dtype, packed, rows)
    if kept is not None:
        kept[key] = prepared
    return prepared


def _adapter_switches(model: nn.Module) -> Iterator[tuple]:
    """Which adapters are on in each LoRA layer (the reference turns them off)."""
    for module in model.modules():
        if _lora_parts(module) is not None:
            yield bool(module.disable_adapters), tuple(module.active_adapters)


def _prepare_weights(model: nn.Module, dtype: torch.dtype, packed: bool, rows: int) -> _Prepared:
    """Merged, stacked, cast to `dtype` and, with `packed`, prepacked by oneDNN."""
    linears = prepacked(rows) if packed else UNFUSED

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    def weight(linear: nn.Module) -> torch.Tensor:
        return linears.prepare(effective_weight(linear).to(dtype))

    layers = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias = _stacked(attention.q_proj, attention.k_proj, attention.v_proj)
        layers.append(
            _LayerWeights(
                layer.input_layernorm.weight.detach(),
                linears.prepare(qkv.to(dtype)),
                cast(qkv_bias),
                weight(attention.o_proj),
                cast(_bias(attention.o_proj)),
                layer.post_attention_layernorm.weight.detach(),
                weight(mlp.gate_proj),
                cast(_bias(mlp.gate_proj)),
                weight(mlp.up_proj),
                cast(_bias(mlp.up_proj)),
                weight(mlp.down_proj),
                cast(_bias(mlp.down_proj)),
            )
        )
    return _Prepared(layers, weight(model.lm_head), cast(_bias(model.lm_head)), linears)


class LlamaDecodeStep:
    """Next-token logits for one new token per row, continuing a prefilled cache.

    Built from the model, the cache its prefill returned (left-padded prompts,
    `attention_mask` [B, P]) and the number of tokens still to come; calling it with the
    tokens just drawn [B·repeats] returns the logits of the next ones [B·repeats, V]
    (float32). The prefill's keys and values are copied into a cache of P +
    `max_new_tokens` positions, each prompt's `repeats` times (rows i·G .. i·G+G−1 continue
    prompt i), which each step fills one column of; the prefill's own cache is left as it
    was, so one prefill can be decoded several times. :meth:`select` keeps only some rows.
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """A Llama or Qwen2 causal LM (or a peft LoRA model of one) whose projections are
        linear maps or LoRA adapters on them, and full attention in every layer."""
        model = _causal_lm(model)
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
        if type(decoder.embed_tokens) is not nn.Embedding:
            return False
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if getattr(attention, "sliding_window", None) is not None:
                return False
            linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
            linears += (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if not all(_plain_or_lora(linear) for linear in linears):
                return False
        return True

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        repeats: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        model = _causal_lm(model)
        config = model.config
        decoder = model.model
        prompts, prompt_length = attention_mask.shape
        batch = prompts * repeats
        first = decoder.layers[0].self_attn
        self.batch = batch
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.eps = config.rms_norm_eps
        self.embed = decoder.embed_tokens.weight.detach()
        self.rotary = decoder.rotary_emb
        self.final_norm = decoder.norm.weight.detach()
        prepared = _prepare(model, dtype, batch)
        self.linears, self.layers = prepared.linears, prepared.layers
        self.head, self.head_bias = prepared.head, prepared.head_bias

        capacity = prompt_length + max_new_tokens
        like = cache.layers[0].keys
        # keys stored transposed ([B, KV heads, D, positions]): q·Kᵀ then reads them in order
        keys_shape = (batch, self.kv_heads, self.head_dim, capacity)
        values_shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [like.new_zeros(keys_shape, dtype=dtype) for _ in self.layers]
        self.values = [like.new_zeros(values_shape, dtype=dtype) for _ in self.layers]
        for i, layer_cache in enumerate(cache.layers):
            keys, values = layer_cache.keys, layer_cache.values
            if repeats > 1:
                keys = keys.repeat_interleave(repeats, dim=0)
                values = values.repeat_interleave(repeats, dim=0)
            self.keys[i][..., :prompt_length] = keys.transpose(-1, -2)
            self.values[i][:, :, :prompt_length] = values
        mask = attention_mask.to(like.device).repeat_interleave(repeats, dim=0)
        # additive mask over cache columns: −inf on the prompts' left padding
        self.mask_bias = like.new_zeros(batch, 1, 1, capacity, dtype=torch.float32)
        self.mask_bias[:, 0, 0, :prompt_length].masked_fill_(mask == 0, float("-inf"))
        self.length = prompt_length  # cache columns filled
        self.positions = last_positions(mask)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch from now on (finished rows dropped)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.mask_bias = self.mask_bias[rows]
        self.positions = self.positions[rows]
        self.batch = int(rows.numel())

    @torch.no_grad()
    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        batch, heads, kv_heads, head_dim = self.batch, self.heads, self.kv_heads, self.head_dim
        linears, eps, dtype = self.linears, self.eps, self.dtype
        column = self.length
        if column >= self.values[0].shape[2]:
            raise RuntimeError(f"the decoding cache holds {column} positions; it is full")
        self.positions = self.positions + 1
        x = F.embedding(token, self.embed).to(dtype)  # [B, hidden]
        cos, sin = self.rotary(x, self.positions)  # [B, 1, D]
        half = head_dim // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        # one rotation for the query and key heads together; the attention's 1/√d folded
        # into the queries' part
        scaled = self.scaling
        qk_cos = torch.cat((cos.expand(-1, heads, -1) * scaled, cos.expand(-1, kv_heads, -1)), 1)
        qk_sin = torch.cat(
            (signed_sin.expand(-1, heads, -1) * scaled, signed_sin.expand(-1, kv_heads, -1)), 1
        )
        qk_cos, qk_sin = qk_cos.to(dtype), qk_sin.to(dtype)
        seen = column + 1
        mask_bias = self.mask_bias[..., :seen]
        for w, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            h = rms_norm(x, w.input_norm, eps)
            qkv = linears.plain(h, w.qkv, w.qkv_bias).view(batch, heads + 2 * kv_heads, head_dim)
            qk = rotate(qkv[:, : heads + kv_heads], qk_cos, qk_sin)
            keys[..., column] = qk[:, heads:]
            values[:, :, column] = qkv[:, heads + kv_heads :]
            # query heads grouped by the key/value head they share (repeat_kv's order)
            q = qk[:, :heads].view(batch, kv_heads, heads // kv_heads, head_dim)
            scores = torch.matmul(q, keys[..., :seen])
            probs = torch.softmax(scores + mask_bias, dim=-1, dtype=torch.float32).to(dtype)
            attended = torch.matmul(probs, values[:, :, :seen]).view(batch, heads * head_dim)
            x = linears.add(attended, x, w.o, w.o_bias)
            h = rms_norm(x, w.post_norm, eps)
            gate = linears.silu(h, w.gate, w.gate_bias)
            x = linears.add(linears.mul(h, gate, w.up, w.up_bias), x, w.down, w.down_bias)
        self.length = seen
        logits = linears.plain(rms_norm(x, self.final_norm, eps), self.head, self.head_bias)
        return logits.float()


__all__ = ["LlamaDecodeStep", "effective_weight", "frozen_weights", "rms_norm", "rotate"]
