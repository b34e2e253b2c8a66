"""Synthetic metric streams for the guard tests."""

import numpy as np
import pytest


def clean_stream(steps: int = 200, seed: int = 0) -> list[dict[str, float]]:
    """A healthy run: every metric noisy around a steady level; gold every 5 steps."""
    rng = np.random.default_rng(seed)
    stream = []
    for step in range(steps):
        metrics = {
            "objective/scores": 0.5 + 0.1 * rng.standard_normal(),
            "objective/kl": 2.0 + 0.3 * rng.standard_normal(),
            "objective/entropy": 2.0 + 0.1 * rng.standard_normal(),
            "completions/mean_length": 50.0 + 3.0 * rng.standard_normal(),
            "completions/repetition_rate": 0.05 + 0.01 * rng.standard_normal(),
        }
        if step % 5 == 0:
            metrics["gold/score"] = 0.6 + 0.05 * rng.standard_normal()
        stream.append(metrics)
    return stream


def length_hack_stream(
    steps: int = 100, start: int = 40, stop: int | None = None, seed: int = 0
) -> list[dict[str, float]]:
    """A reward that pays for length: from step `start` responses grow, the proxy reward
    rises with them and the gold score (every 5 steps) falls; from `stop` on (if given) the
    drift halts and everything stays at that level."""
    rng = np.random.default_rng(seed)
    stream = []
    for step in range(steps):
        hack = max(0, min(step, stop if stop is not None else step) - start)
        length = 50.0 * (1.0 + 0.03 * hack) + 2.0 * rng.standard_normal()
        metrics = {
            "objective/scores": 0.01 * length + 0.02 * rng.standard_normal(),
            "objective/kl": 2.0 + 0.05 * hack + 0.2 * rng.standard_normal(),
            "objective/entropy": 2.0 + 0.05 * rng.standard_normal(),
            "completions/mean_length": length,
            "completions/repetition_rate": 0.05 + 0.01 * rng.standard_normal(),
        }
        if step % 5 == 0:
            metrics["gold/score"] = 0.6 - 0.01 * hack + 0.02 * rng.standard_normal()
        stream.append(metrics)
    return stream


@pytest.fixture
def clean():
    return clean_stream()


@pytest.fixture
def hacked():
    return length_hack_stream()


@pytest.fixture
def make_hack_stream():
    return length_hack_stream
