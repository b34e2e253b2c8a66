"""Rule-based shaping terms that penalise the obvious reward hacks: padding, repetition,
evasion; and a bonus for diversity.

Each term scores a batch on its own, already weighted, with the sign it has in the total:
penalties are ≤ 0, the diversity bonus ≥ 0. Combine them with a reward model through
`CompositeReward`. The detection itself lives in `alignkit.rewards.text` (pure functions the
guard and eval reuse).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from alignkit.rewards.base import Prompt, RewardOutput, check_batch, single_part
from alignkit.rewards.text import (
    DEFAULT_EVASIVE_PHRASES,
    batch_novelty,
    is_evasive,
    length_in_words,
    repeated_ngram_fraction,
)


class LengthPenalty:
    """−weight · p, with p the relative overshoot beyond a target length:

        p = max(0, L − target) / target            (mode="linear")
        p = min(cap, max(0, L − target) / target)  (mode="capped")

    L counts tokens (``unit="tokens"``, needs the policy's tokenizer, no special tokens) or
    words. Relative overshoot keeps the weight scale-free: a 96-token answer against a
    64-token target costs 0.5·weight. Counters the "longer is better" hack of reward models.
    """

    name = "length"

    def __init__(
        self,
        target: int,
        *,
        weight: float = 1.0,
        unit: Literal["tokens", "words"] = "tokens",
        mode: Literal["linear", "capped"] = "linear",
        cap: float = 1.0,
        tokenizer=None,
    ):
        if target <= 0:
            raise ValueError(f"length target must be positive, got {target}")
        if unit not in ("tokens", "words"):
            raise ValueError(f"unit must be 'tokens' or 'words', got {unit!r}")
        if mode not in ("linear", "capped"):
            raise ValueError(f"mode must be 'linear' or 'capped', got {mode!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("a length target in tokens needs a tokenizer (or use unit='words')")
        self.target, self.weight, self.unit, self.mode, self.cap = target, weight, unit, mode, cap
        self.tokenizer = tokenizer

    def length(self, response: str) -> int:
        if self.unit == "words":
            return length_in_words(response)
        return len(self.tokenizer(response, add_special_tokens=False)["input_ids"])

    def penalty(self, response: str) -> float:
        overshoot = max(0, self.length(response) - self.target) / self.target
        return min(self.cap, overshoot) if self.mode == "capped" else overshoot

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        return single_part(self.name, [-self.weight * self.penalty(r) for r in responses])


class RepetitionPenalty:
    """−weight · (fraction of repeated word n-grams) = −weight · (1 − distinct-n).

    Counters a policy that repeats the phrases its reward model pays for: "Paris Paris Paris Paris" with n=2
    costs 2/3·weight, a sentence without repeated bigrams costs nothing.
    """

    name = "repetition"

    def __init__(self, *, weight: float = 1.0, n: int = 2):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.weight, self.n = weight, n

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        return single_part(
            self.name, [-self.weight * repeated_ngram_fraction(r, self.n) for r in responses]
        )


class EvasionPenalty:
    """−weight for a response containing a refusal/evasion phrase, 0 otherwise.

    Counters a policy that learns to refuse ("I can't answer that") because a refusal is never
    punished as a wrong answer is. The
    phrase list is configurable; matching is case-insensitive substring search.
    """

    name = "evasion"

    def __init__(self, *, weight: float = 1.0, phrases: Iterable[str] = DEFAULT_EVASIVE_PHRASES):
        self.weight = weight
        self.phrases = tuple(phrases)
        if not self.phrases:
            raise ValueError("EvasionPenalty needs at least one phrase")

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        return single_part(
            self.name, [-self.weight * float(is_evasive(r, self.phrases)) for r in responses]
        )


class DiversityBonus:
    """+weight · novelty, novelty = share of a response's distinct word n-grams that no other
    response of the same batch contains (`batch_novelty`).

    Rewards diversity and works against mode collapse: with GRPO's G samples per
    prompt, G identical answers get nothing. Depends on the batch, so score the whole
    rollout batch at once.
    """

    name = "diversity"

    def __init__(self, *, weight: float = 1.0, n: int = 2):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.weight, self.n = weight, n

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        novelty = batch_novelty(list(responses), self.n)
        return single_part(self.name, [self.weight * v for v in novelty])
