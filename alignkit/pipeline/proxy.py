"""The reward-hacking episode's flawed proxy: the reward model plus a term that pays for
length, the taste of the feedback panel's length-loving annotator.

It is deliberately wrong for the ``plain`` group (which wants at most 25 words) and
rewards padding for everyone, so an optimiser that follows it makes answers longer
while the gold judge's score falls: the over-optimisation of Gao et al. (2022) in a few
iterations, where the guard can be seen to act.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.rewards.text import length_in_words

WORDS_FOR_FULL_BONUS = 60


def pays_for_length(prompts: Sequence[object], responses: Sequence[str]) -> list[float]:
    """bonus = min(1, words / 60): each word is worth the same, up to 60 words."""
    return [min(1.0, length_in_words(r) / WORDS_FOR_FULL_BONUS) for r in responses]
