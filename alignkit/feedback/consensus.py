"""From labels to training pairs: one preferred answer per item, by a stated rule."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

from alignkit.feedback.labels import Label


def consensus(labels: Sequence[Label], *, drop: Collection[str] = ()) -> dict[str, str]:
    """Item → "a" or "b": the strict majority of the item's labels, leaving out the
    annotators in `drop` (the flagged ones, say). Items whose majority is a tie or "both
    bad", or that have no strict majority, get no pair."""
    votes: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        if label.annotator not in drop:
            votes[label.item].append(label.choice)
    decided = {}
    for item, choices in votes.items():
        counts = {c: choices.count(c) for c in set(choices)}
        best = max(counts.values())
        winners = [c for c, n in counts.items() if n == best]
        if len(winners) == 1 and winners[0] in ("a", "b") and best * 2 > len(choices):
            decided[item] = winners[0]
    return decided
