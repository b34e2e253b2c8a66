"""Attention over packed rows that never looks across sequences (varlen attention for SDPA).

Padding-free scoring runs a batch as ONE row of its real tokens with position ids restarting
at 0 for each sequence. transformers' SDPA path turns that into a dense block-diagonal
[N, N] mask, and the attention kernel then computes every (query, key) pair of the row,
masked ones included: for a DPO batch of 8 sequences of 250 tokens that is 8× the useful
attention work, and the forward and backward of SmolLM2-135M take twice as long as they
need to. Flash-attention kernels take the sequence boundaries instead (`cu_seq_lens`); on
the CPU there is none, so :func:`packed_sdpa_attention` splits the row at the boundaries and
runs causal SDPA on each sequence: the same values, and only the work a padded batch would
have done on its real tokens.

The same function also serves rows in which several sequences share one copy of their
prompt (a preference pair, a GRPO group: `shared_prompt_segments`), each response
attending to the prompt and to itself.

It is registered with transformers as ``"alignkit_sdpa"``: exactly SDPA (same mask, same
function) unless a forward pass carries `cu_seq_lens_q` (the flash-attention keyword that
transformers forwards to every attention layer) or `shared_prompt_segments`, so
generation, caches and padded batches are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_SDPA = "alignkit_sdpa"
# Implementations that read `cu_seq_lens_q` / `cu_seq_lens_k` themselves.
_VARLEN_IMPLEMENTATIONS = frozenset(
    {PACKED_SDPA, "flash_attention_2", "flash_attention_3", "flash_attention_4"}
)


def packed_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence, softmax(q_i K_jᵀ·scale) V_j for j ≤ i in
    the same sequence; plain SDPA when the call carries no sequence boundaries.

    query [1, H, N, d], key/value [1, H_kv, N, d] (grouped-query heads allowed); the
    boundaries are `cu_seq_lens_q` = [0, n_1, n_1+n_2, ..., N]. Returns [1, N, H, d] like
    transformers' attention functions.
    """
    segments = kwargs.get("shared_prompt_segments")
    if segments is not None:
        return _shared_prompt_attention(module, query, key, value, segments, dropout, scaling)
    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths = boundaries.diff().tolist()
    grouped = key.shape[1] != query.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=dropout if module.training else 0.0,
            is_causal=True,
            scale=scaling,
            enable_gqa=grouped,
        )
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _shared_prompt_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: list[tuple[int, tuple[int, ...]]],
    dropout: float,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Attention over a row of groups laid out as prompt | response 1 | response 2 | ...,
    each prompt once (:func:`alignkit.models.scoring.pack_shared_prompts`).

    The prompt and the first response attend causally to themselves; every later response
    attends to the whole prompt and causally to itself, never to another response: what
    each sequence sees in its own row, so every score equals the unshared one.
    """
    grouped = key.shape[1] != query.shape[1]
    p_drop = dropout if module.training else 0.0

    def attend(q, k, v, **mask):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=p_drop, scale=scaling, enable_gqa=grouped, **mask
        )

    # split, never slice, the full row: a slice's backward writes a zero tensor the size of
    # the whole row, once per slice
    groups = [prompt + sum(responses) for prompt, responses in segments]
    outputs = []
    for (prompt, responses), q_group, k_group, v_group in zip(
        segments,
        query.split(groups, dim=2),
        key.split(groups, dim=2),
        value.split(groups, dim=2),
        strict=True,
    ):
        pieces = [prompt + responses[0], *responses[1:]]
        qs, ks, vs = (t.split(pieces, dim=2) for t in (q_group, k_group, v_group))
        outputs.append(attend(qs[0], ks[0], vs[0], is_causal=True))
        prompt_keys, prompt_values = ks[0][:, :, :prompt], vs[0][:, :, :prompt]
        for q, k, v in zip(qs[1:], ks[1:], vs[1:], strict=True):
            n = q.shape[2]
            if not n:
                continue
            sees = torch.ones(n, prompt + n, dtype=torch.bool, device=query.device)
            outputs.append(
                attend(
                    q,
                    torch.cat([prompt_keys, k], dim=2),
                    torch.cat([prompt_values, v], dim=2),
                    attn_mask=sees.tril(diagonal=prompt),
                )
            )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)


def _switch_sdpa(config: PretrainedConfig) -> str:
    """Move a model on SDPA to ``"alignkit_sdpa"`` (the same everywhere but packed rows);
    returns the attention implementation now in use."""
    if config._attn_implementation == "sdpa":
        config._attn_implementation = PACKED_SDPA
    return config._attn_implementation


def packed_attention_kwargs(config: PretrainedConfig, position_ids: torch.Tensor) -> dict:
    """The keywords that make the model with this `config` attend within each sequence of a
    packed row.

    `position_ids` [1, N] restart at 0 where a sequence starts. A model on SDPA is switched to
    ``"alignkit_sdpa"`` (same results everywhere else); a flash-attention model reads the same
    keywords; any other model gets none and relies on transformers' block-diagonal mask.
    """
    if _switch_sdpa(config) not in _VARLEN_IMPLEMENTATIONS:
        return {}
    starts = torch.nonzero(position_ids[0] == 0).flatten()
    total = torch.tensor([position_ids.shape[1]], device=starts.device)
    boundaries = torch.cat([starts, total]).to(torch.int32)
    longest = int(boundaries.diff().max())
    return {
        "cu_seq_lens_q": boundaries,
        "cu_seq_lens_k": boundaries,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def shared_prompt_attention_kwargs(
    config: PretrainedConfig, segments: list[tuple[int, tuple[int, ...]]]
) -> dict | None:
    """The keywords for a row of groups sharing their prompts (see
    :func:`_shared_prompt_attention`), or None when this model's attention cannot take it
    (only ``"alignkit_sdpa"`` can; a model on SDPA is switched to it)."""
    if _switch_sdpa(config) != PACKED_SDPA:
        return None
    return {"shared_prompt_segments": segments}
