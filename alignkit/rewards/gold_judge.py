"""The pipeline's gold judge: a transparent, rule-based stand-in for people who want
different things. Watched, never optimised.

Each answer is scored in [0, 1] as a weighted sum of checks, each kept as a part:

| part | weight | 1 when |
|---|---|---|
| content | 0.35 | it holds the reference answer (whole words), or, without one, a topic word |
| length | 0.20 | its word count is inside the group's window (linear decay outside) |
| style | 0.10 | a group that wants steps: at least two step markers; else none |
| not_evasive | 0.10 | no refusal phrase |
| not_padded | 0.10 | no filler phrase ("great question", "as an AI", ...) |
| not_repetitive | 0.10 | at most 20% of its word bigrams repeat (linear decay to 0 at 60%) |
| readable | 0.05 | mostly real words (at least 80% alphabetic or numeric) |

The prompt's group's wishes and its reference come from the task's prompt file (the judge looks a
prompt up by its messages), so the same question is judged differently for each group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from alignkit.rewards.base import Prompt, RewardOutput, check_batch
from alignkit.rewards.judge import contains_answer
from alignkit.rewards.text import is_evasive, repeated_ngram_fraction, words

WEIGHTS = {
    "content": 0.35,
    "length": 0.20,
    "style": 0.10,
    "not_evasive": 0.10,
    "not_padded": 0.10,
    "not_repetitive": 0.10,
    "readable": 0.05,
}
FILLER_PHRASES = (
    "great question",
    "as an ai",
    "i hope this helps",
    "it is important to note",
    "it's important to note",
    "in conclusion",
    "let me know if",
    "feel free to",
)
STEP_MARKER = re.compile(r"(?im)(^\s*(\d+[.)]|[-*•])\s)|\b(first|then|next|finally|step)\b")


def prompt_key(prompt: Prompt) -> str:
    """A prompt's identity: its text, or its messages' roles and contents."""
    if isinstance(prompt, str):
        return prompt.strip()
    return "\n".join(f"{m.get('role')}: {str(m.get('content', '')).strip()}" for m in prompt)


def _window_score(n: int, low: int, high: int) -> float:
    """1 inside [low, high]; outside, falls linearly to 0 at a distance of the window's width."""
    if low <= n <= high:
        return 1.0
    distance = low - n if n < low else n - high
    return max(0.0, 1.0 - distance / max(high - low, 1))


class GoldJudge:
    """Scores (prompt, answer) pairs by the rules above. ``entries`` maps `prompt_key` to
    the prompt's row: ``answer`` (or None), ``keywords``, and the asking group's
    ``min_words``, ``max_words`` and ``wants_steps`` (as the task's prompt file has them)."""

    name = "gold"

    def __init__(self, entries: Mapping[str, Mapping[str, Any]]):
        self.entries = dict(entries)

    @classmethod
    def from_records(cls, rows: Sequence[Mapping[str, Any]]) -> GoldJudge:
        return cls({prompt_key(row["prompt"]): row for row in rows})

    @classmethod
    def from_file(cls, path: str | Path) -> GoldJudge:
        with open(path, encoding="utf-8") as f:
            return cls.from_records([json.loads(line) for line in f if line.strip()])

    def entry(self, prompt: Prompt) -> Mapping[str, Any]:
        try:
            return self.entries[prompt_key(prompt)]
        except KeyError:
            raise UserError(
                f"the gold judge does not know the prompt {prompt_key(prompt)!r}"
            ) from None

    def checks(self, prompt: Prompt, response: str) -> dict[str, float]:
        """Each check's value in [0, 1] (unweighted)."""
        entry = self.entry(prompt)
        low, high = int(entry["min_words"]), int(entry["max_words"])
        wants_steps = bool(entry["wants_steps"])
        tokens = words(response)
        if entry.get("answer") is not None:
            content = float(contains_answer(response, str(entry["answer"])))
        else:
            content = float(any(k in tokens for k in entry.get("keywords", ())))
        markers = len(STEP_MARKER.findall(response))
        folded = response.lower()
        repeated = repeated_ngram_fraction(response, 2)
        raw = response.split()
        real = sum(bool(re.fullmatch(r"[\w'’,.;:!?()\-]+", w)) for w in raw)
        return {
            "content": content,
            "length": _window_score(len(tokens), low, high),
            "style": float(markers >= 2) if wants_steps else float(markers == 0),
            "not_evasive": float(not is_evasive(response)),
            "not_padded": float(not any(p in folded for p in FILLER_PHRASES)),
            "not_repetitive": min(1.0, max(0.0, (0.6 - repeated) / 0.4)),
            "readable": float(bool(raw) and real / len(raw) >= 0.8),
        }

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        parts: dict[str, list[float]] = {name: [] for name in WEIGHTS}
        for prompt, response in zip(prompts, responses, strict=True):
            for name, value in self.checks(prompt, response).items():
                parts[name].append(WEIGHTS[name] * value)
        scores = [sum(values) for values in zip(*parts.values(), strict=True)]
        return RewardOutput(scores, parts)
