import pytest

from alignkit.errors import UserError
from alignkit.guard import AdaptiveKLController, FixedKLController, build_kl_controller


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.1)
    assert ctl.update(100.0, 256) == 0.1
    assert ctl.value == 0.1


def test_adaptive_exact_formula_on_a_hand_case():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 6.6: e = 6.6/6 − 1 = 0.1 (inside the clip); β = 0.1·(1 + 0.1·256/10000)
    assert ctl.update(6.6, 256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))


@pytest.mark.parametrize(
    ("kl", "error"),
    [(9.0, 0.2), (600.0, 0.2), (3.0, -0.2), (0.0, -0.2), (6.0, 0.0), (5.4, -0.1)],
)
def test_adaptive_error_is_clipped_to_plus_minus_0_2(kl, error):
    ctl = AdaptiveKLController(0.5, target=6.0, horizon=1000)
    ctl.update(kl, 100)
    assert ctl.value == pytest.approx(0.5 * (1 + error * 100 / 1000))


def test_adaptive_moves_beta_toward_the_target():
    above = AdaptiveKLController(0.1, target=1.0, horizon=100)
    below = AdaptiveKLController(0.1, target=1.0, horizon=100)
    for _ in range(10):
        grown = above.value
        above.update(2.0, 10)  # KL above target → β grows (a tighter leash)
        assert above.value > grown
        shrunk = below.value
        below.update(0.5, 10)  # below → β shrinks (more freedom)
        assert below.value < shrunk
    assert above.value == pytest.approx(0.1 * 1.02**10)
    assert below.value == pytest.approx(0.1 * 0.98**10)


def test_state_round_trip():
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=500)
    ctl.update(10.0, 64)
    resumed = AdaptiveKLController(0.2, target=3.0, horizon=500)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    assert resumed.update(1.0, 64) == ctl.update(1.0, 64)


def test_bad_values_and_builder():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0)
    with pytest.raises(ValueError):
        FixedKLController(-1.0)
    assert type(build_kl_controller({"beta": 0.3})) is FixedKLController
    adaptive = build_kl_controller({"beta": 0.3, "target": 6.0, "horizon": 100})
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.horizon == 100
    with pytest.raises(UserError, match="unknown key"):
        build_kl_controller({"kl_coef": 0.1})
    with pytest.raises(UserError, match="target"):
        build_kl_controller({"target": -1.0})


def test_adaptive_beta_stays_positive_when_a_batch_outnumbers_the_horizon():
    """β·(1 + e·n/H) with e = −0.2 is negative once n/H > 5: one update moves β by at most
    the clip's 20%, however many samples the batch had."""
    from alignkit.guard.kl_controllers import AdaptiveKLController

    controller = AdaptiveKLController(0.1, target=6.0, horizon=10)
    assert controller.update(current_kl=0.0, n_steps=100) == pytest.approx(0.08)
    assert controller.update(current_kl=100.0, n_steps=100) == pytest.approx(0.096)
    for _ in range(50):
        assert controller.update(current_kl=0.0, n_steps=10_000) > 0
