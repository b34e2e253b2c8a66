"""The rollout inspector's data: the samples an online run wrote to ``rollouts.jsonl``,
one summary per sample for the list and the whole record, token by token, on request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.web.runs.folders import ROLLOUTS_FILE, OutsideRuns, read_jsonl, run_folder

MAX_SAMPLES = 5000  # the newest ones: a long run's file can be large


def prompt_text(prompt: Any) -> str:
    """A prompt as one line of text: a string, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        turns = [m.get("content", "") for m in prompt if isinstance(m, dict)]
        users = [
            m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"
        ]
        return (users or turns or [""])[-1]
    return str(prompt)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tokens(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's per-token figures; in a damaged record, what is not a token object is
    left out (the run's writer always writes objects)."""
    tokens = record.get("tokens")
    return [t for t in tokens if isinstance(t, dict)] if isinstance(tokens, list) else []


def _summary(index: int, record: dict[str, Any]) -> dict[str, Any]:
    tokens = _tokens(record)
    return {
        "index": index,
        "iteration": record.get("iteration"),
        "prompt": prompt_text(record.get("prompt")),
        "user_group": record.get("user_group"),
        "sample": record.get("sample"),
        "response": record.get("response", ""),
        "score": record.get("score"),
        "score_parts": record.get("score_parts", {}),
        "advantage": record.get("advantage"),
        "kl": sum(t["kl"] for t in tokens if _number(t.get("kl"))),
        "tokens": len(tokens),
    }


def _with_logratio(token: dict[str, Any]) -> dict[str, Any]:
    """The token's figures plus log π_θ − log π_ref (what k1 is; the run may log k3 as kl)."""
    if _number(token.get("logp")) and _number(token.get("ref_logp")):
        return token | {"logratio": token["logp"] - token["ref_logp"]}
    return token


def _records(root: Path, run_id: str) -> list[dict[str, Any]]:
    return read_jsonl(run_folder(root, run_id) / ROLLOUTS_FILE)


def rollout_list(root: Path, run_id: str) -> dict[str, Any]:
    """One summary per logged sample (newest MAX_SAMPLES), with its score and summed KL."""
    records = _records(root, run_id)
    first = max(len(records) - MAX_SAMPLES, 0)
    return {
        "total": len(records),
        "samples": [_summary(i, r) for i, r in enumerate(records) if i >= first],
    }


def rollout_detail(root: Path, run_id: str, index: int) -> dict[str, Any]:
    """The sample's tokens with every per-token figure, and the same prompt's other samples
    across the run's iterations."""
    records = _records(root, run_id)
    if not 0 <= index < len(records):
        raise OutsideRuns(f"no rollout {index} in {run_id!r}")
    record = records[index]
    text = prompt_text(record.get("prompt"))
    same = [_summary(i, r) for i, r in enumerate(records) if prompt_text(r.get("prompt")) == text]
    tokens = [_with_logratio(t) for t in _tokens(record)]
    figures = sorted({k for t in tokens for k in t if k != "token"})
    return {
        "summary": _summary(index, record),
        "prompt_full": record.get("prompt"),
        "group_scores": record.get("group_scores"),
        "figures": figures,
        "tokens": tokens,
        "same_prompt": same,
    }
