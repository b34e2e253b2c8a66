"""Simulated annotators with known flaws, labelling pairs from a gold judge's scores.

Real feedback is noisy and biased; the pipeline's stand-in for people should be too, so
that the agreement statistics have something to find. Each annotator, for each item, in
this order: with probability `left_bias` picks the answer shown on the left; else with
probability `length_bias` picks the longer answer; else with probability `noise` picks
either answer at random; else follows the gold scores (a tie when they are within
`tie_margin`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignkit.feedback.labels import Label


@dataclass(frozen=True)
class PairItem:
    """Two answers to one prompt, as the gold judge scored them."""

    item: str
    gold_a: float
    gold_b: float
    length_a: int
    length_b: int


@dataclass(frozen=True)
class SimulatedAnnotator:
    name: str
    noise: float = 0.0
    left_bias: float = 0.0
    length_bias: float = 0.0
    tie_margin: float = 0.0

    def label(self, pair: PairItem, left: str, rng: random.Random) -> Label:
        if rng.random() < self.left_bias:
            choice = left
        elif rng.random() < self.length_bias and pair.length_a != pair.length_b:
            choice = "a" if pair.length_a > pair.length_b else "b"
        elif rng.random() < self.noise:
            choice = rng.choice(("a", "b"))
        elif abs(pair.gold_a - pair.gold_b) <= self.tie_margin:
            choice = "tie"
        else:
            choice = "a" if pair.gold_a > pair.gold_b else "b"
        return Label(pair.item, self.name, choice, left)


# A panel like a real one: two careful annotators and three with one flaw each.
DEFAULT_PANEL: tuple[SimulatedAnnotator, ...] = (
    SimulatedAnnotator("careful-1", noise=0.05),
    SimulatedAnnotator("careful-2", noise=0.05),
    SimulatedAnnotator("noisy", noise=0.8),
    SimulatedAnnotator("left-biased", noise=0.05, left_bias=0.6),
    SimulatedAnnotator("length-lover", noise=0.05, length_bias=0.7),
)


def simulate_labels(
    pairs: Sequence[PairItem],
    annotators: Sequence[SimulatedAnnotator] = DEFAULT_PANEL,
    *,
    overlap: int = 3,
    seed: int = 0,
) -> list[Label]:
    """Each pair labelled by `overlap` different annotators, taken in turn round the panel
    (so every pair of annotators shares items), left/right randomised per label."""
    if not 1 <= overlap <= len(annotators):
        raise ValueError(f"overlap must be between 1 and {len(annotators)}, got {overlap}")
    rng = random.Random(seed)
    labels = []
    for index, pair in enumerate(pairs):
        start = (index * overlap) % len(annotators)
        for k in range(overlap):
            annotator = annotators[(start + k) % len(annotators)]
            labels.append(annotator.label(pair, rng.choice(("a", "b")), rng))
    return labels
