"""Active learning: the pairs the reward model is least sure of are labelled first.

Under Bradley–Terry the reward model's probability that answer a is preferred is
σ(r_a − r_b); its uncertainty about the pair is how close that is to a coin flip, and the
queue orders items by u = |σ(r_a − r_b) − ½|, smallest first (uncertainty sampling, Lewis
& Gale 1994). A label there tells the reward model the most.
"""

from __future__ import annotations

import math

from alignkit.web.store import Store


def preference_uncertainty(reward_a: float, reward_b: float) -> float:
    """|σ(r_a − r_b) − ½|: 0 for a coin flip, → ½ for a sure call.

    Computed as ½·tanh(|r_a − r_b| / 2), the same value (σ(d) − ½ = ½·tanh(d/2)), which
    neither overflows for a large gap nor depends on the order of the two answers."""
    return 0.5 * math.tanh(abs(reward_a - reward_b) / 2)


def load_reward_scorer(path: str, *, batch_size: int = 8):
    """The reward model at ``path`` (a folder written by ``alignkit rm``) as a scorer."""
    from alignkit.rewards.model import RewardModelScorer

    return RewardModelScorer.from_path(path, batch_size=batch_size)


def score_unscored_items(store: Store, scorer, *, limit: int = 64) -> int:
    """Give up to ``limit`` items without a score their rewards and uncertainty; returns how
    many it scored."""
    items = store.items(unscored_only=True)[:limit]
    if not items:
        return 0
    prompts = [item.prompt for item in items]
    rewards_a = scorer(prompts, [item.answer_a for item in items]).scores.tolist()
    rewards_b = scorer(prompts, [item.answer_b for item in items]).scores.tolist()
    store.set_rewards(
        [
            (item.id, r_a, r_b, preference_uncertainty(r_a, r_b))
            for item, r_a, r_b in zip(items, rewards_a, rewards_b, strict=True)
        ]
    )
    return len(items)
