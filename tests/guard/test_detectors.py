import math

import pytest

from alignkit.guard import (
    DETECTORS,
    EntropyCollapseDetector,
    KLBoundDetector,
    LengthDriftDetector,
    NonFiniteDetector,
    ProxyGoldDivergenceDetector,
    RepetitionRiseDetector,
    RewardSpikeDetector,
    slope_t_statistic,
)


def run(detector, stream, start=0):
    return [e for step, m in enumerate(stream, start) for e in detector.observe(step, m)]


def with_metric(stream, key, values):
    """A copy of the stream with `key` replaced by `values` from step 0 on."""
    out = [dict(m) for m in stream]
    for m, v in zip(out, values, strict=False):
        m[key] = v
    return out


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_is_quiet_on_a_clean_stream(name, clean):
    assert run(DETECTORS[name](), clean) == []


def test_reward_spike_fires_on_a_planted_jump(clean):
    stream = [dict(m) for m in clean]
    stream[60]["objective/scores"] = 3.0
    events = run(RewardSpikeDetector(), stream)
    assert [e.step for e in events] == [60]
    event = events[0]
    assert event.detector == "reward_spike" and event.severity == "warning"
    assert event.values["value"] == 3.0 and event.values["z"] > 4.0
    assert "objective/scores" in event.message


def test_reward_spike_waits_for_warmup_and_respects_direction():
    stream = [{"r": 0.0}] * 3 + [{"r": 100.0}]
    assert run(RewardSpikeDetector("r", warmup=5, window=10), stream) == []
    drop = [{"r": float(i % 2)} for i in range(20)] + [{"r": -50.0}]
    assert run(RewardSpikeDetector("r", direction="up"), drop) == []
    assert len(run(RewardSpikeDetector("r", direction="down"), drop)) == 1


def test_kl_bound_with_patience(clean):
    kl = [2.0] * 10 + [12.0, 2.0, 12.0, 12.0, 12.0]
    stream = with_metric(clean[:15], "objective/kl", kl)
    assert [e.step for e in run(KLBoundDetector(max_kl=10.0), stream)] == [10, 12, 13, 14]
    assert [e.step for e in run(KLBoundDetector(max_kl=10.0, patience=2), stream)] == [13, 14]
    assert run(KLBoundDetector(max_kl=10.0), stream)[0].values == {"value": 12.0, "bound": 10.0}


def test_length_drift_against_the_early_baseline(clean):
    lengths = [50.0] * 5 + [60.0, 74.0, 76.0, 20.0]
    stream = with_metric(clean[:9], "completions/mean_length", lengths)
    events = run(LengthDriftDetector(max_relative_change=0.5), stream)
    assert [e.step for e in events] == [7, 8]
    assert events[0].values["change"] == pytest.approx(0.52)
    assert events[1].values["change"] == pytest.approx(-0.6)
    only_up = run(LengthDriftDetector(max_relative_change=0.5, direction="up"), stream)
    assert [e.step for e in only_up] == [7]


def test_entropy_collapse_fraction_and_floor(clean):
    entropy = [2.0] * 5 + [1.0, 0.5, 0.3]
    stream = with_metric(clean[:8], "objective/entropy", entropy)
    assert [e.step for e in run(EntropyCollapseDetector(min_fraction=0.3), stream)] == [6, 7]
    with_floor = EntropyCollapseDetector(floor=1.5, min_fraction=None)
    assert [e.step for e in run(with_floor, stream)] == [5, 6, 7]


def test_repetition_rise(clean):
    stream = with_metric(clean[:6], "completions/repetition_rate", [0.05] * 4 + [0.5, 0.1])
    events = run(RepetitionRiseDetector(max_rate=0.3), stream)
    assert [e.step for e in events] == [4]


def test_proxy_gold_divergence_fires_on_the_length_hack(hacked):
    events = run(ProxyGoldDivergenceDetector(window_steps=30), hacked)
    assert events, "the reward hack went unnoticed"
    first = events[0]
    assert 40 < first.step <= 70
    assert first.severity == "critical"
    assert first.values["proxy_rise"] > 0 and first.values["gold_drop"] > 0


def test_proxy_gold_quiet_when_both_rise():
    stream = [{"objective/scores": 0.01 * s, "gold/score": 0.02 * s} for s in range(60)]
    assert run(ProxyGoldDivergenceDetector(), stream) == []


def test_slope_t_statistic():
    slope, t = slope_t_statistic([(0, 1.0), (1, 3.0), (2, 5.0)])
    assert slope == pytest.approx(2.0) and t == math.inf
    slope, t = slope_t_statistic([(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0)])
    # slope 0.2; residuals ±0.3/0.6 → se = sqrt(0.8/2/5)
    assert slope == pytest.approx(0.2) and t == pytest.approx(0.2 / math.sqrt(0.08))


def test_non_finite_metrics():
    events = run(NonFiniteDetector(), [{"a": 1.0, "b": float("nan")}, {"a": "note"}])
    assert len(events) == 1 and events[0].step == 0
    assert math.isnan(events[0].values["b"])
    assert run(NonFiniteDetector(["a"]), [{"b": float("inf")}]) == []


def test_nan_does_not_poison_baselines():
    spike = RewardSpikeDetector("r", warmup=3, window=5)
    run(spike, [{"r": 1.0}, {"r": float("nan")}, {"r": 1.1}, {"r": 0.9}])
    assert list(spike.history) == [1.0, 1.1, 0.9]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_state_round_trip_continues_identically(name, hacked):
    first, second = DETECTORS[name](), DETECTORS[name]()
    run(first, hacked[:50])
    second.load_state_dict(first.state_dict())
    assert run(first, hacked[50:], start=50) == run(second, hacked[50:], start=50)


def test_bad_options():
    with pytest.raises(ValueError):
        RewardSpikeDetector(warmup=30, window=20)
    with pytest.raises(ValueError):
        EntropyCollapseDetector(floor=None, min_fraction=None)
    with pytest.raises(ValueError):
        KLBoundDetector(severity="fatal")
