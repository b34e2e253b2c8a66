import json

import pytest

from alignkit.errors import UserError
from alignkit.guard import (
    DETECTORS,
    AdaptiveKLController,
    Guard,
    KLBoundDetector,
    ProxyGoldDivergenceDetector,
    RewardSpikeDetector,
    build_guard,
)

HIGH_KL = {"objective/kl": 50.0}
LOW_KL = {"objective/kl": 1.0}


def kl_guard(policy, **options):
    return Guard([KLBoundDetector(max_kl=10.0)], policy, **options)


def test_warn_records_and_continues():
    guard = kl_guard("warn")
    assert guard.observe(0, LOW_KL).action == "continue"
    decision = guard.observe(1, HIGH_KL)
    assert decision.action == "continue"
    assert [e.detector for e in decision.events] == ["kl_bound"]
    assert "kl_bound" in decision.reason
    assert len(guard.events) == 1


def test_stop_policy_stops_at_the_first_event():
    guard = kl_guard("stop")
    assert guard.observe(0, LOW_KL).action == "continue"
    decision = guard.observe(1, HIGH_KL)
    assert decision.action == "stop" and "objective/kl" in decision.reason


def test_rollback_needs_a_good_checkpoint():
    decision = kl_guard("rollback").observe(3, HIGH_KL)
    assert decision.action == "stop" and "no good checkpoint" in decision.reason


def test_rollback_adjusts_and_is_capped():
    guard = kl_guard("rollback", max_rollbacks=2, rollback_beta_factor=1.5, rollback_lr_factor=0.1)
    guard.observe(10, LOW_KL)
    assert guard.mark_good(10)
    guard.observe(11, LOW_KL)  # the step-10 policy's own samples: fine, so 10 is good
    for expected in (1, 2):
        decision = guard.observe(12, HIGH_KL)
        assert decision.action == "rollback"
        assert decision.rollback_to == 10
        # β: × 1.5 per rollback on the larger of the reached and the restored β;
        # learning rate: the configured peak × 0.1 per rollback so far
        assert decision.beta_factor == 1.5
        assert decision.beta_after_rollback(0.2, 0.1) == pytest.approx(0.3)
        assert decision.lr_scale == pytest.approx(0.1**expected)
        assert guard.rollbacks == expected
    assert guard.lr_scale == pytest.approx(0.01)
    decision = guard.observe(12, HIGH_KL)
    assert decision.action == "stop" and "rollback limit 2" in decision.reason


def test_min_severity_filters_what_acts():
    guard = Guard(
        [KLBoundDetector(max_kl=10.0, severity="warning")], "stop", min_severity="critical"
    )
    decision = guard.observe(0, HIGH_KL)
    assert decision.action == "continue" and len(decision.events) == 1


def test_mark_good_refuses_steps_with_recent_events():
    guard = kl_guard("warn", quiet_steps=2)
    guard.observe(5, HIGH_KL)
    assert not guard.mark_good(5)
    assert not guard.mark_good(7)  # event at 5 is within the 2 quiet steps before 7
    assert guard.mark_good(8)
    guard.observe(9, LOW_KL)
    assert guard.last_good_step == 8


def test_a_checkpoint_is_good_once_its_own_policy_was_seen_behaving():
    """Step s's metrics come from samples of the policy saved at s − 1: a checkpoint whose
    very next samples trigger holds the drifting policy, and rolling back to it would
    replay the same samples and trigger again."""
    guard = kl_guard("rollback")
    guard.observe(10, LOW_KL)
    assert guard.mark_good(10)
    assert guard.last_good_step is None  # not yet: its policy has not been sampled
    decision = guard.observe(11, HIGH_KL)
    assert decision.action == "stop" and "no good checkpoint" in decision.reason

    guard = kl_guard("rollback")
    guard.observe(10, LOW_KL)
    guard.mark_good(10)
    guard.observe(11, LOW_KL)
    assert guard.last_good_step == 10
    guard.mark_good(12)
    decision = guard.observe(13, HIGH_KL)  # the step-12 policy drifts: back to 10
    assert decision.action == "rollback" and decision.rollback_to == 10


def test_rollback_rewinds_the_detectors_to_the_good_step():
    spike = RewardSpikeDetector("r", window=10, warmup=3)
    guard = Guard([spike], "rollback")
    for step, value in enumerate([1.0, 1.1, 0.9, 1.0]):
        guard.observe(step, {"r": value})
    guard.mark_good(3)
    guard.observe(4, {"r": 1.05})
    decision = guard.observe(5, {"r": 99.0})
    assert decision.action == "rollback" and decision.rollback_to == 3
    assert list(spike.history) == [1.0, 1.1, 0.9, 1.0]  # as it was at step 3
    assert guard.mark_good(4)  # the abandoned step-5 event no longer blocks replayed steps


def test_state_round_trip_is_json_safe_and_exact(hacked):
    guard, resumed = build_guard({"policy": "warn"}), build_guard({"policy": "warn"})
    for step, metrics in enumerate(hacked[:45]):
        guard.observe(step, metrics)
        if step % 10 == 0:
            guard.mark_good(step)
    state = json.loads(json.dumps(guard.state_dict()))
    resumed.load_state_dict(state)
    for step, metrics in enumerate(hacked[45:], 45):
        a, b = guard.observe(step, metrics), resumed.observe(step, metrics)
        assert a.events == b.events and a.action == b.action
    assert resumed.last_good_step == 40


def test_planted_length_hack_is_caught_and_rolled_back(hacked, make_hack_stream):
    """A reward that pays for length: reward and length rise together while gold falls.
    The simulated trainer checkpoints every 10 steps; after a rollback it replays from the
    good checkpoint with a tighter KL, which (here) halts the drift where it was."""
    guard = build_guard({"policy": "rollback", "max_rollbacks": 1})
    kl = AdaptiveKLController(0.05, target=6.0)
    decisions = []
    step = 0
    stream = hacked
    while step < len(stream):
        decision = guard.observe(step, stream[step])
        decisions.append(decision)
        if decision.action == "rollback":
            kl.value = decision.beta_after_rollback(kl.value, kl.value)
            step = decision.rollback_to + 1
            stream = make_hack_stream(stop=decision.rollback_to, seed=1)
            continue
        assert decision.action != "stop"
        if step % 10 == 0:
            guard.mark_good(step)
        step += 1
    rollbacks = [d for d in decisions if d.action == "rollback"]
    assert len(rollbacks) == 1
    first = rollbacks[0]
    assert "proxy_gold_divergence" in {e.detector for e in first.events}
    assert first.rollback_to <= 50  # a checkpoint from before the hack was detected
    assert kl.value == pytest.approx(0.1)
    assert guard.rollbacks == 1


def test_hack_stream_alone_keeps_rolling_back_then_stops(hacked):
    guard = Guard([ProxyGoldDivergenceDetector(window_steps=30)], "rollback", max_rollbacks=2)
    actions, step = [], 0
    while step < len(hacked):
        decision = guard.observe(step, hacked[step])
        if decision.action != "continue":
            actions.append(decision.action)
        if decision.action == "stop":
            break
        if decision.action == "rollback":
            step = decision.rollback_to + 1
            continue
        if step % 10 == 0:
            guard.mark_good(step)
        step += 1
    assert actions == ["rollback", "rollback", "stop"]


def test_build_guard_defaults_and_selection():
    guard = build_guard()
    assert guard.policy == "warn"
    assert [d.name for d in guard.detectors] == list(DETECTORS)
    chosen = build_guard(
        {
            "policy": "stop",
            "detectors": {"kl_bound": {"max_kl": 3.0}, "reward_spike": True, "non_finite": False},
        }
    )
    assert [d.name for d in chosen.detectors] == ["kl_bound", "reward_spike"]
    assert chosen.detectors[0].bound == 3.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"polcy": "stop"}, "unknown key"),
        ({"policy": "panic"}, "policy"),
        ({"detectors": {"vibes": {}}}, "unknown guard detector 'vibes'"),
        ({"detectors": {"kl_bound": {"max": 3}}}, "unknown option"),
        ({"detectors": {"reward_spike": {"warmup": 50}}}, "warmup"),
        ({"detectors": ["kl_bound"]}, "must map"),
    ],
)
def test_build_guard_mistakes_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        build_guard(config)
