"""The GRPO benchmark's reward: one cheap, deterministic function of the completion text.

Both systems call the same function, so the reward is not what is measured:

- alignkit, as a Python reward (``reward={"reward_functions": [REWARD_SPEC]}``), calls
  ``letter_share(prompts, responses)`` with the decoded responses (strings);
- TRL calls ``letter_share(prompts=..., completions=..., completion_ids=..., **columns)``
  with conversational completions (``[{"role": "assistant", "content": text}]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REWARD_SPEC = "benchmarks.rewards:letter_share"


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    return ""


def letter_share(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """The share of alphabetic characters in each completion (0 for an empty one): a score
    in [0, 1] that differs between samples, so group-normalised advantages are not all 0."""
    scores = []
    for completion in completions:
        text = completion_text(completion)
        scores.append(sum(ch.isalpha() for ch in text) / len(text) if text else 0.0)
    return scores
