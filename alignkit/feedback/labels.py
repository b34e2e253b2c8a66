"""One label: an annotator's choice between the two answers of one item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Choice = Literal["a", "b", "tie", "both_bad"]
CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class Label:
    """`choice` names the item's answer ("a" or "b"), not the side it was shown on;
    `left` is the answer shown on the left (first), so position bias can be measured."""

    item: str
    annotator: str
    choice: Choice
    left: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {self.choice!r}")
        if self.left not in ("a", "b"):
            raise ValueError(f"left must be 'a' or 'b', got {self.left!r}")

    @property
    def picked_left(self) -> bool | None:
        """True/False when the annotator picked one answer; None for tie or both bad."""
        if self.choice in ("a", "b"):
            return self.choice == self.left
        return None
