"""KL coefficient controllers: the β of r_t − β·KL(π_θ ‖ π_ref), the penalty that keeps the
policy near the reference, where the reward model's scores still mean something.

"If KL too high: increase β; if KL too low: decrease β" — `AdaptiveKLController` does that
with the proportional controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from
Human Preferences", §2.2), as in TRL's `AdaptiveKLController`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignkit.errors import UserError


class FixedKLController:
    """A constant β."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """β moves to keep the measured KL near a target (Ziegler et al. 2019):

        e = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · min(n / horizon, 1))

    with n the number of samples (episodes) in the batch just used. The clip bounds each
    update: at most ±20 % per ``horizon`` samples, so one noisy KL estimate cannot swing β;
    a batch larger than the horizon counts as one horizon, so β stays positive (Ziegler's
    β·(1 + e·n/H) is negative once n/H > 5).
    KL and target must be in the same units (the trainer's ``objective/kl``).
    `load_state_dict` restores β; target and horizon come from the constructor (config).
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000):
        super().__init__(init_beta)
        if target <= 0:
            raise ValueError(f"target KL must be positive, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * min(n_steps / self.horizon, 1.0)
        return self.value


KL_KEYS = ("beta", "target", "horizon")


def build_kl_controller(config: Mapping[str, Any]) -> FixedKLController:
    """``{beta: 0.05}`` → fixed; ``{beta: 0.05, target: 6.0, horizon: 10000}`` → adaptive."""
    unknown = sorted(set(config) - set(KL_KEYS))
    if unknown:
        raise UserError(
            f"unknown key(s) in kl config: {', '.join(unknown)}; expected beta, target, horizon"
        )
    beta = float(config.get("beta", 0.05))
    try:
        if config.get("target") is None:
            return FixedKLController(beta)
        return AdaptiveKLController(
            beta, float(config["target"]), int(config.get("horizon", 10000))
        )
    except ValueError as exc:
        raise UserError(f"kl config: {exc}") from exc
