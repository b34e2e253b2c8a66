"""Tokenization of records, truncation, collators and SFT packing.

Conversational rows go through the tokenizer's chat template: the prompt is rendered with
``add_generation_prompt=True`` and the response is the rest of the full conversation's
rendering, so ``prompt_ids + response_ids`` is exactly the tokenization of the whole
conversation. If the tokenizer merges characters across the prompt/response seam into one
token, that token goes to the response (the prompt keeps only the tokens wholly inside it),
so the concatenation property still holds and no response text is masked out.
Plain-text rows are ``prompt + response + eos``.

Truncation (``max_length`` total, optional ``max_prompt_length``): the prompt keeps its END
(its beginning is dropped), first to ``max_prompt_length``; then, if prompt plus response is
still longer than ``max_length``, the prompt is cut to ``max(max_length - len(response),
max_length // 2)`` tokens and the response loses its tail. For preference pairs the longer
of chosen/rejected decides how much prompt is kept, so both share one prompt.

Labels are -100 on the prompt (unless ``train_on_prompt``) and on padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jinja2 import TemplateError

from alignkit.data.records import Example, PreferenceExample, PromptExample, SFTExample, Text
from alignkit.errors import DataError

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- encoding


@contextlib.contextmanager
def template_errors(record: Example, index: int) -> Iterator[None]:
    """A conversation the tokenizer's chat template refuses (``raise_exception`` in the
    template: "System role not supported", "roles must alternate") is a DataError naming
    the record's file and row (``record.origin``; else its 1-based ``index``), not a
    jinja2 traceback from the middle of tokenization."""
    try:
        yield
    except TemplateError as err:
        path, row = record.origin or ("<records>", index)
        raise DataError(
            f"the model's chat template refuses this conversation: {err}", path=path, row=row
        ) from None


def _ids(encoded: Any) -> list[int]:
    """input_ids from whatever a tokenizer call or apply_chat_template returned."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return list(encoded)


def render_prompt(prompt: Text, tokenizer) -> str:
    """The prompt as the model sees it: the chat template with a generation prompt for
    message lists, the text itself otherwise."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def _encode_text(text: str, tokenizer, *, add_special_tokens: bool) -> list[int]:
    return _ids(tokenizer(text, add_special_tokens=add_special_tokens))


def _strip_eos(ids: list[int], tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids[:-1] if eos is not None and ids and ids[-1] == eos else ids


def encode_prompt(prompt: Text, tokenizer) -> list[int]:
    if isinstance(prompt, str):
        # the tokenizer's own specials (e.g. a BOS), but never a trailing EOS on a prompt
        return _strip_eos(_encode_text(prompt, tokenizer, add_special_tokens=True), tokenizer)
    return _encode_text(render_prompt(prompt, tokenizer), tokenizer, add_special_tokens=False)


def encode_pair(prompt: Text, response: Text, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for one prompt and one response."""
    if isinstance(prompt, str):
        prompt_ids = encode_prompt(prompt, tokenizer)
        response_ids = _encode_text(response, tokenizer, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            response_ids = [*response_ids, tokenizer.eos_token_id]
        return prompt_ids, response_ids
    prompt_text = render_prompt(prompt, tokenizer)
    full_text = tokenizer.apply_chat_template(
        list(prompt) + list(response), add_generation_prompt=False, tokenize=False
    )
    full = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    full_ids = _ids(full)
    if full_text.startswith(prompt_text):
        prompt_ids = _encode_text(prompt_text, tokenizer, add_special_tokens=False)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, full_ids[len(prompt_ids) :]
        if tokenizer.is_fast:
            # a token spans the boundary (a merge across it): the prompt keeps the tokens
            # wholly inside it and the straddling token goes to the response, so the
            # response's first words are never masked out of the loss
            cut = 0
            for _, end in full["offset_mapping"]:
                if end > len(prompt_text):
                    break
                cut += 1
            return full_ids[:cut], full_ids[cut:]
    # the template renders the prompt differently inside the full conversation (rare, e.g.
    # templates that drop reasoning): fall back to the two renderings side by side
    prompt_ids = _encode_text(prompt_text, tokenizer, add_special_tokens=False)
    common = 0
    while common < min(len(prompt_ids), len(full_ids)) and prompt_ids[common] == full_ids[common]:
        common += 1
    return prompt_ids, full_ids[common:]


# ----------------------------------------------------------------------------- truncation


def truncate(
    prompt_ids: list[int],
    response_lengths: Sequence[int],
    max_length: int | None,
    max_prompt_length: int | None,
) -> tuple[int, int]:
    """(number of prompt tokens to keep from the END, max response length) under the limits."""
    keep_prompt = len(prompt_ids)
    if max_prompt_length is not None:
        keep_prompt = min(keep_prompt, max_prompt_length)
    longest = max(response_lengths, default=0)
    if max_length is None:
        return keep_prompt, longest
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if keep_prompt + longest > max_length:
        keep_prompt = min(keep_prompt, max(max_length - longest, max_length // 2))
    return keep_prompt, max_length - keep_prompt


def _labels(
    prompt_ids: list[int],
    response_ids: list[int],
    train_on_prompt: bool,
    prompt_trainable: Sequence[bool] | None = None,
) -> list[int]:
    if train_on_prompt:
        head = list(prompt_ids)
    elif prompt_trainable is not None:
        head = [
            t if keep else IGNORE_INDEX
            for t, keep in zip(prompt_ids, prompt_trainable, strict=True)
        ]
    else:
        head = [IGNORE_INDEX] * len(prompt_ids)
    return head + list(response_ids)


def _assistant_mask(prompt: Text, prompt_ids: list[int], tokenizer) -> list[bool] | None:
    """True on the tokens of the earlier assistant turns inside a conversational prompt.

    Each turn is located by rendering the conversation up to it; a turn whose rendering is
    not a token prefix of the whole prompt (unusual templates) stays masked.
    """
    if isinstance(prompt, str):
        return None
    mask = [False] * len(prompt_ids)
    for i, msg in enumerate(prompt):
        if msg["role"] != "assistant" or i == 0:
            continue
        before, turn = encode_pair(prompt[:i], [msg], tokenizer)
        end = len(before) + len(turn)
        if prompt_ids[:end] == before + turn:
            mask[len(before) : end] = [True] * len(turn)
    return mask


# ----------------------------------------------------------------------------- tokenize_*


def tokenize_preference(
    example: PreferenceExample,
    tokenizer,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    *,
    train_on_prompt: bool = False,
) -> dict[str, Any]:
    """Keys: prompt_input_ids, chosen_input_ids, chosen_labels, rejected_input_ids,
    rejected_labels (full sequences: prompt + response), prompt_length, group, margin."""
    p_c, chosen = encode_pair(example.prompt, example.chosen, tokenizer)
    p_r, rejected = encode_pair(example.prompt, example.rejected, tokenizer)
    # the same prompt gives the same ids unless a token straddled the boundary: then the
    # shared prompt is the common prefix and the rest moves into each response
    n = 0
    while n < min(len(p_c), len(p_r)) and p_c[n] == p_r[n]:
        n += 1
    prompt_ids = p_c[:n]
    chosen, rejected = p_c[n:] + chosen, p_r[n:] + rejected
    keep, max_resp = truncate(
        prompt_ids, [len(chosen), len(rejected)], max_length, max_prompt_length
    )
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    chosen, rejected = chosen[:max_resp], rejected[:max_resp]
    return {
        "prompt_input_ids": prompt_ids,
        "chosen_input_ids": prompt_ids + chosen,
        "chosen_labels": _labels(prompt_ids, chosen, train_on_prompt),
        "rejected_input_ids": prompt_ids + rejected,
        "rejected_labels": _labels(prompt_ids, rejected, train_on_prompt),
        "prompt_length": len(prompt_ids),
        "group": example.group,
        "margin": example.margin,
    }


def tokenize_sft(
    example: SFTExample,
    tokenizer,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    *,
    train_on_prompt: bool = False,
    all_assistant_turns: bool = False,
) -> dict[str, Any]:
    """Keys: input_ids, labels, prompt_length, group.

    For ``messages`` rows the loss is on the final assistant message; earlier assistant
    turns are part of the prompt and masked unless ``all_assistant_turns`` (loss on every
    assistant turn) or ``train_on_prompt`` (loss on everything).
    """
    prompt_ids, response = encode_pair(example.prompt, example.completion, tokenizer)
    mask = _assistant_mask(example.prompt, prompt_ids, tokenizer) if all_assistant_turns else None
    keep, max_resp = truncate(prompt_ids, [len(response)], max_length, max_prompt_length)
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    if mask is not None:
        mask = mask[len(mask) - keep :]
    response = response[:max_resp]
    return {
        "input_ids": prompt_ids + response,
        "labels": _labels(prompt_ids, response, train_on_prompt, mask),
        "prompt_length": len(prompt_ids),
        "group": example.group,
    }


def tokenize_prompt(
    example: PromptExample | PreferenceExample | SFTExample,
    tokenizer,
    max_prompt_length: int | None = None,
) -> dict[str, Any]:
    """Keys: input_ids (the prompt, its end kept under max_prompt_length), prompt (the
    original text or messages), prompt_text (as rendered), group, extra."""
    ids = encode_prompt(example.prompt, tokenizer)
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[len(ids) - max_prompt_length :]
    return {
        "input_ids": ids,
        "prompt": example.prompt,
        "prompt_text": render_prompt(example.prompt, tokenizer),
        "group": example.group,
        "extra": dict(getattr(example, "extra", {}) or {}),
    }


def tokenize_records(
    records: Sequence[Example],
    tokenizer,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    *,
    train_on_prompt: bool = False,
    all_assistant_turns: bool = False,
) -> list[dict[str, Any]]:
    """tokenize_preference / tokenize_sft / tokenize_prompt on each record, by its type."""
    return [
        _tokenize_record(
            rec,
            i,
            tokenizer,
            max_length,
            max_prompt_length,
            train_on_prompt=train_on_prompt,
            all_assistant_turns=all_assistant_turns,
        )
        for i, rec in enumerate(records, start=1)
    ]


def _tokenize_record(
    rec: Example,
    index: int,
    tokenizer,
    max_length: int | None,
    max_prompt_length: int | None,
    *,
    train_on_prompt: bool,
    all_assistant_turns: bool,
) -> dict[str, Any]:
    with template_errors(rec, index):
        if isinstance(rec, PreferenceExample):
            return tokenize_preference(
                rec, tokenizer, max_length, max_prompt_length, train_on_prompt=train_on_prompt
            )
        if isinstance(rec, SFTExample):
            return tokenize_sft(
                rec,
                tokenizer,
                max_length,
                max_prompt_length,
                train_on_prompt=train_on_prompt,
                all_assistant_turns=all_assistant_turns,
            )
        return tokenize_prompt(rec, tokenizer, max_prompt_length or max_length)


# ----------------------------------------------------------------------------- collators


def pad_sequences(
    seqs: Sequence[Sequence[int]], value: int, length: int, *, left: bool = False
) -> torch.Tensor:
    """Token lists as one [len(seqs), length] tensor, padded with `value` on the right (or left)."""
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        t = torch.as_tensor(list(s), dtype=torch.long)
        if left:
            out[i, length - len(s) :] = t
        else:
            out[i, : len(s)] = t
    return out


def _target_length(seqs: Sequence[Sequence[int]], multiple: int | None) -> int:
    length = max((len(s) for s in seqs), default=0)
    if multiple and length % multiple:
        length += multiple - length % multiple
    return length


class PreferenceCollator:
    """Batches tokenized pairs for ONE forward pass: rows 0..B-1 are the chosen sequences,
    rows B..2B-1 the rejected ones (same order), right-padded to one common length.

    Returns: input_ids [2B, L], attention_mask [2B, L], labels [2B, L] (-100 on prompt and
    padding), margin [B] float (0.0 where a row has none), has_margin [B] bool,
    group (list of B str|None), prompt_lengths [B].
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seqs = [f["chosen_input_ids"] for f in features] + [
            f["rejected_input_ids"] for f in features
        ]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        length = _target_length(seqs, self.pad_to_multiple_of)
        margins = [f.get("margin") for f in features]
        return {
            "input_ids": pad_sequences(seqs, self.pad_token_id, length),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, length),
            "labels": pad_sequences(labels, IGNORE_INDEX, length),
            "margin": torch.tensor([m or 0.0 for m in margins], dtype=torch.float),
            "has_margin": torch.tensor([m is not None for m in margins], dtype=torch.bool),
            "group": [f.get("group") for f in features],
            "prompt_lengths": torch.tensor(
                [f.get("prompt_length", 0) for f in features], dtype=torch.long
            ),
        }


class SFTCollator:
    """Right-pads tokenized SFT rows (or packed blocks).

    Returns: input_ids [B, L], attention_mask [B, L], labels [B, L] (-100 on prompt and
    padding), group (list), and position_ids [B, L] when the features carry them (packing).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seqs = [f["input_ids"] for f in features]
        length = _target_length(seqs, self.pad_to_multiple_of)
        batch = {
            "input_ids": pad_sequences(seqs, self.pad_token_id, length),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, length),
            "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX, length),
            "group": [f.get("group") for f in features],
        }
        if all("position_ids" in f for f in features):
            batch["position_ids"] = pad_sequences([f["position_ids"] for f in features], 0, length)
        return batch


class PromptCollator:
    """LEFT-pads tokenized prompts for generation (PPO/GRPO).

    Returns: input_ids [B, L], attention_mask [B, L], prompt (list of the original texts or
    message lists), prompt_text (list of rendered prompts), group (list), extra (list of dicts).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seqs = [f["input_ids"] for f in features]
        length = _target_length(seqs, self.pad_to_multiple_of)
        return {
            "input_ids": pad_sequences(seqs, self.pad_token_id, length, left=True),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, length, left=True),
            "prompt": [f.get("prompt") for f in features],
            "prompt_text": [f.get("prompt_text") for f in features],
            "group": [f.get("group") for f in features],
            "extra": [f.get("extra", {}) for f in features],
        }


# ----------------------------------------------------------------------------- packing


def pack_sequences(tokenized: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Greedily pack tokenized SFT rows (in order) into blocks of at most ``max_length``.

    Each block has input_ids, labels and position_ids; position ids restart at 0 for every
    example, and the first label of every example is -100 so no example learns to predict
    its first token from the previous one. An example longer than ``max_length`` is cut to
    it. The SFT loss turns the restarting position ids into attention boundaries on
    Llama-family decoders (each example attends to itself only); on other decoders only the
    position ids restart. ``group`` is the block's first group.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    blocks: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for ex in tokenized:
        ids = list(ex["input_ids"])[:max_length]
        labels = list(ex["labels"])[:max_length]
        if not ids:
            continue
        labels[0] = IGNORE_INDEX
        if cur is None or len(cur["input_ids"]) + len(ids) > max_length:
            cur = {"input_ids": [], "labels": [], "position_ids": [], "group": ex.get("group")}
            blocks.append(cur)
        cur["input_ids"] += ids
        cur["labels"] += labels
        cur["position_ids"] += list(range(len(ids)))
    return blocks
