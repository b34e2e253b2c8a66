"""Paired win rates and their 95% intervals, against hand-computed cases."""

import pytest

from alignkit.eval.win_rate import paired_outcomes, wilson_interval, win_rate


def test_outcomes_are_paired_by_prompt_with_ties_as_half():
    assert paired_outcomes([1.0, 0.0, 0.5, 0.3], [0.0, 1.0, 0.5, 0.29], tie_tolerance=0.02) == [
        1.0,
        0.0,
        0.5,
        0.5,
    ]
    with pytest.raises(ValueError):
        paired_outcomes([1.0], [1.0, 2.0])


def test_wilson_interval_hand_computed():
    # 7 wins, 2 ties, 1 loss: p = 0.8, n = 10. Wilson: centre (0.8 + 1.9208/10)/1.38415,
    # half 1.96·√(0.016 + 0.009604)/1.38415 → (0.4902, 0.9433), the textbook 8/10 interval.
    result = win_rate([1] * 7 + [0.5] * 2 + [0], [0] * 7 + [0.5] * 2 + [1], method="wilson")
    assert (result.wins, result.ties, result.losses, result.n) == (7, 2, 1, 10)
    assert result.rate == pytest.approx(0.8)
    assert (result.low, result.high) == pytest.approx((0.490162, 0.943318), abs=1e-6)
    assert wilson_interval(0.5, 4) == pytest.approx((0.150039, 0.849961), abs=1e-6)
    low, high = wilson_interval(1.0, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.722467, abs=1e-6)


def test_bootstrap_interval_is_seeded_and_degenerate_when_every_prompt_agrees():
    scores, baseline = [1, 1, 0, 1, 0.5, 1, 0, 1], [0] * 8
    a = win_rate(scores, baseline, method="bootstrap", seed=3)
    b = win_rate(scores, baseline, method="bootstrap", seed=3)
    assert (a.low, a.high) == (b.low, b.high) and a.low <= a.rate <= a.high
    assert a.method == "bootstrap"
    all_wins = win_rate([1] * 5, [0] * 5, method="bootstrap")
    assert (all_wins.low, all_wins.rate, all_wins.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="method"):
        win_rate([1], [0], method="magic")


def test_bootstrap_is_the_default_and_measures_the_spread_of_ties():
    # 37 wins, 34 ties, 19 losses: mean 0.6, outcome variance (37·0.16 + 34·0.01 + 19·0.36)/90
    # = 0.14556, so the normal interval is 0.6 ± 1.96·√(0.14556/90) = (0.5212, 0.6788).
    # Wilson treats every outcome as 0 or 1 (variance 0.24) and is wider: (0.4967, 0.6951).
    scores = [1.0] * 37 + [0.5] * 34 + [0.0] * 19
    baseline = [0.0] * 37 + [0.5] * 34 + [1.0] * 19
    default = win_rate(scores, baseline)
    assert default.method == "bootstrap"
    assert (default.wins, default.ties, default.losses) == (37, 34, 19)
    assert default.low == pytest.approx(0.5212, abs=0.012)
    assert default.high == pytest.approx(0.6788, abs=0.012)
    wilson = win_rate(scores, baseline, method="wilson")
    assert (wilson.low, wilson.high) == pytest.approx((0.4967, 0.6951), abs=1e-4)
    assert wilson.low < default.low and default.high < wilson.high
