"""Detectors over the metrics stream of an online run: the reward's distribution, sudden
spikes, KL to the reference, and the responses' patterns (length, repetition, entropy) —
where reward hacking and instability show before a person would notice them.

Each detector reads one or two metrics from the dict the trainer logs every step and returns
the `GuardEvent`s it finds; a metric absent from a step is skipped (gold scores come only
at eval steps), and a non-finite value is left to `NonFiniteDetector` so it never poisons a
running baseline. Detectors are stateful; `state_dict()` is plain Python (JSON-safe) so a
checkpoint can resume them, and the `Guard` rewinds them on rollback.

Threshold detectors fire on every step the condition holds, after ``patience`` steps in a
row (patience 1: at once).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from alignkit.guard.events import GuardEvent, Severity, severity_rank

Direction = Literal["both", "up", "down"]


class Detector:
    """Base: a ``name``, a ``severity`` for its events, and `observe` → events."""

    name: ClassVar[str] = "detector"

    def __init__(self, severity: Severity = "warning", patience: int = 1):
        severity_rank(severity)  # validates
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.severity, self.patience = severity, patience
        self._streak = 0

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        raise NotImplementedError

    def after_rollback(self) -> None:
        """Called once the guard has rewound this detector to the good step's state."""

    def event(self, step: int, message: str, **values: float) -> GuardEvent:
        return GuardEvent(
            step, self.name, self.severity, message, {k: float(v) for k, v in values.items()}
        )

    def _held(self, breached: bool) -> bool:
        """True once the condition has held ``patience`` observations in a row."""
        self._streak = self._streak + 1 if breached else 0
        return self._streak >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self._streak}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._streak = int(state.get("streak", 0))


def finite_metric(metrics: Mapping[str, float], key: str) -> float | None:
    """metrics[key] as a float, or None when absent or not finite."""
    try:
        value = float(metrics[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def slope_t_statistic(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope b of y on x and its t statistic b / se(b) (needs ≥ 3 points).

    se(b) = sqrt(Σ residual² / (n − 2) / Σ (x − x̄)²). A perfect fit has t = ±inf.
    """
    n = len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_mean, y_mean = sum(xs) / n, sum(ys) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return 0.0, 0.0
    slope = sum((x - x_mean) * (y - y_mean) for x, y in points) / sxx
    intercept = y_mean - slope * x_mean
    rss = sum((y - intercept - slope * x) ** 2 for x, y in points)
    se = math.sqrt(rss / (n - 2) / sxx)
    if se <= 1e-12 * max(1.0, abs(slope)):
        return slope, math.copysign(math.inf, slope) if slope else 0.0
    return slope, slope / se


# ----------------------------------------------------------------------------- detectors


class RewardSpikeDetector(Detector):
    """The reward jumps far outside its recent distribution: |z| > z_threshold with

        z = (r_t − mean(window)) / max(std(window), min_std)

    over the last ``window`` values before step t, once ``warmup`` values are in. A sudden
    jump is the typical sign of the policy finding an exploit of the reward model. ``direction="up"`` ignores drops.
    """

    name = "reward_spike"

    def __init__(
        self,
        metric: str = "objective/scores",
        *,
        window: int = 20,
        warmup: int = 10,
        z_threshold: float = 4.0,
        direction: Direction = "both",
        min_std: float = 1e-3,
        severity: Severity = "warning",
    ):
        super().__init__(severity)
        if not 2 <= warmup <= window:
            raise ValueError(f"need 2 <= warmup <= window, got warmup={warmup}, window={window}")
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be both, up or down, got {direction!r}")
        self.metric, self.window, self.warmup = metric, window, warmup
        self.z_threshold, self.direction, self.min_std = z_threshold, direction, min_std
        self.history: deque[float] = deque(maxlen=window)

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        value = finite_metric(metrics, self.metric)
        if value is None:
            return []
        events = []
        if len(self.history) >= self.warmup:
            mean, std = mean_std(list(self.history))
            z = (value - mean) / max(std, self.min_std)
            spiked = {"both": abs(z), "up": z, "down": -z}[self.direction] > self.z_threshold
            if spiked:
                events.append(
                    self.event(
                        step,
                        f"{self.metric} = {value:.4g} is {z:+.1f} std from its recent mean "
                        f"{mean:.4g} (std {std:.3g})",
                        value=value,
                        z=z,
                        mean=mean,
                        std=std,
                    )
                )
        # spikes join the window too: a lasting shift becomes the new normal instead of
        # firing forever
        self.history.append(value)
        return events

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = deque(state["history"], maxlen=self.window)


class _BoundDetector(Detector):
    """A metric above a bound (``patience`` steps in a row)."""

    bound_name: ClassVar[str] = "bound"

    def __init__(self, metric: str, bound: float, severity: Severity, patience: int):
        super().__init__(severity, patience)
        self.metric, self.bound = metric, float(bound)

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        value = finite_metric(metrics, self.metric)
        if value is None:
            return []
        if not self._held(value > self.bound):
            return []
        message = f"{self.metric} = {value:.4g} above {self.bound_name} {self.bound:.4g}"
        return [self.event(step, message, value=value, bound=self.bound)]


class KLBoundDetector(_BoundDetector):
    """KL(π_θ ‖ π_ref) above ``max_kl``: the policy has left the region where the reward
    model was trained, so its scores mean less. In the units of the trainer's ``objective/kl``."""

    name = "kl_bound"
    bound_name = "max_kl"

    def __init__(
        self,
        metric: str = "objective/kl",
        *,
        max_kl: float = 10.0,
        patience: int = 1,
        severity: Severity = "warning",
    ):
        super().__init__(metric, max_kl, severity, patience)


class RepetitionRiseDetector(_BoundDetector):
    """The rollouts' repetition rate (mean `repeated_ngram_fraction`) above ``max_rate``:
    the policy repeats phrases its reward pays for, or is collapsing."""

    name = "repetition"
    bound_name = "max_rate"

    def __init__(
        self,
        metric: str = "completions/repetition_rate",
        *,
        max_rate: float = 0.3,
        patience: int = 1,
        severity: Severity = "warning",
    ):
        super().__init__(metric, max_rate, severity, patience)


class _BaselineDetector(Detector):
    """Keeps the mean of a metric's first ``baseline_steps`` values as its baseline."""

    def __init__(self, metric: str, baseline_steps: int, severity: Severity, patience: int):
        super().__init__(severity, patience)
        if baseline_steps < 1:
            raise ValueError(f"baseline_steps must be at least 1, got {baseline_steps}")
        self.metric, self.baseline_steps = metric, baseline_steps
        self.early: list[float] = []

    @property
    def baseline(self) -> float | None:
        if len(self.early) < self.baseline_steps:
            return None
        return sum(self.early) / len(self.early)

    def _collect(self, value: float) -> bool:
        """Adds an early value; True while the baseline is still being collected."""
        if len(self.early) < self.baseline_steps:
            self.early.append(value)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "early": list(self.early)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.early = [float(v) for v in state["early"]]


class LengthDriftDetector(_BaselineDetector):
    """Mean response length moves more than ``max_relative_change`` from its baseline:

        |L_t / L_0 − 1| > max_relative_change,   L_0 = mean of the first baseline_steps

    Growing length is the classic reward-model exploit (reward models tend to pay for
    more tokens); shrinking to nothing is the evasive one. ``direction`` picks which to watch.
    """

    name = "length_drift"

    def __init__(
        self,
        metric: str = "completions/mean_length",
        *,
        baseline_steps: int = 5,
        max_relative_change: float = 0.5,
        direction: Direction = "both",
        patience: int = 1,
        severity: Severity = "warning",
    ):
        super().__init__(metric, baseline_steps, severity, patience)
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be both, up or down, got {direction!r}")
        self.max_relative_change, self.direction = max_relative_change, direction

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        value = finite_metric(metrics, self.metric)
        if value is None or self._collect(value):
            return []
        base = self.baseline
        change = value / base - 1.0 if base else 0.0
        moved = {"both": abs(change), "up": change, "down": -change}[self.direction]
        if not self._held(moved > self.max_relative_change):
            return []
        message = (
            f"{self.metric} = {value:.4g} is {change:+.0%} from its baseline {base:.4g} "
            f"(limit ±{self.max_relative_change:.0%})"
        )
        return [self.event(step, message, value=value, baseline=base, change=change)]


class EntropyCollapseDetector(_BaselineDetector):
    """Policy entropy below ``floor`` or below ``min_fraction`` of its early baseline: the
    policy is collapsing onto one response pattern (mode collapse)."""

    name = "entropy_collapse"

    def __init__(
        self,
        metric: str = "objective/entropy",
        *,
        floor: float | None = None,
        min_fraction: float | None = 0.3,
        baseline_steps: int = 5,
        patience: int = 1,
        severity: Severity = "warning",
    ):
        super().__init__(metric, baseline_steps, severity, patience)
        if floor is None and min_fraction is None:
            raise ValueError("set floor, min_fraction or both")
        self.floor, self.min_fraction = floor, min_fraction

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        value = finite_metric(metrics, self.metric)
        if value is None:
            return []
        collecting = self._collect(value)
        limits = []
        if self.floor is not None:
            limits.append(self.floor)
        if self.min_fraction is not None and not collecting:
            limits.append(self.min_fraction * self.baseline)
        limit = max(limits) if limits else -math.inf
        if not self._held(value < limit):
            return []
        message = f"{self.metric} = {value:.4g} below {limit:.4g}"
        if self.baseline is not None:
            message += f" (baseline {self.baseline:.4g})"
        return [self.event(step, message, value=value, limit=limit)]


class ProxyGoldDivergenceDetector(Detector):
    """The proxy reward rises while a held-out gold score falls: reward hacking itself
    (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization": past a point, the
    gold score falls as the proxy keeps rising).

    Over the last ``window_steps`` steps, each series is regressed on the step number; the
    detector fires when the proxy's slope has t ≥ t_threshold and the gold's t ≤ −t_threshold
    (both trends are real, not noise), each series has ``min_points`` points, and the fitted
    changes over the window pass ``min_proxy_rise`` / ``min_gold_drop``. Gold may be logged
    less often than the proxy (only at eval steps).
    """

    name = "proxy_gold_divergence"

    def __init__(
        self,
        proxy: str = "objective/scores",
        gold: str = "gold/score",
        *,
        window_steps: int = 50,
        min_points: int = 5,
        t_threshold: float = 2.0,
        min_proxy_rise: float = 0.0,
        min_gold_drop: float = 0.0,
        severity: Severity = "critical",
    ):
        super().__init__(severity)
        if min_points < 3:
            raise ValueError(f"min_points must be at least 3, got {min_points}")
        self.proxy, self.gold, self.window_steps = proxy, gold, window_steps
        self.min_points, self.t_threshold = min_points, t_threshold
        self.min_proxy_rise, self.min_gold_drop = min_proxy_rise, min_gold_drop
        self.series: dict[str, list[tuple[float, float]]] = {"proxy": [], "gold": []}

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        for role, key in (("proxy", self.proxy), ("gold", self.gold)):
            value = finite_metric(metrics, key)
            if value is not None:
                self.series[role].append((float(step), value))
            self.series[role] = [p for p in self.series[role] if p[0] > step - self.window_steps]
        proxy, gold = self.series["proxy"], self.series["gold"]
        if len(proxy) < self.min_points or len(gold) < self.min_points:
            return []
        proxy_slope, proxy_t = slope_t_statistic(proxy)
        gold_slope, gold_t = slope_t_statistic(gold)
        proxy_rise = proxy_slope * (proxy[-1][0] - proxy[0][0])
        gold_drop = -gold_slope * (gold[-1][0] - gold[0][0])
        diverging = (
            proxy_t >= self.t_threshold
            and gold_t <= -self.t_threshold
            and proxy_rise > self.min_proxy_rise
            and gold_drop > self.min_gold_drop
        )
        if not diverging:
            return []
        message = (
            f"{self.proxy} rose by {proxy_rise:.3g} while {self.gold} fell by {gold_drop:.3g} "
            f"over the last {self.window_steps} steps: the policy is exploiting the reward"
        )
        return [
            self.event(
                step,
                message,
                proxy_rise=proxy_rise,
                gold_drop=gold_drop,
                proxy_t=proxy_t,
                gold_t=gold_t,
            )
        ]

    def after_rollback(self) -> None:
        # The good checkpoint may already sit inside the drift (a trend is only significant
        # after some steps), so the rewound window still holds it and would fire again at
        # once. The replay has to show the divergence afresh.
        self.series = {"proxy": [], "gold": []}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "series": {k: [list(p) for p in v] for k, v in self.series.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.series = {
            k: [(float(s), float(v)) for s, v in pts] for k, pts in state["series"].items()
        }


class NonFiniteDetector(Detector):
    """A NaN or ±inf among the watched metrics (all of them when ``metrics`` is None):
    training has diverged; nothing after it can be trusted."""

    name = "non_finite"

    def __init__(self, metrics: Sequence[str] | None = None, *, severity: Severity = "critical"):
        super().__init__(severity)
        self.metrics = list(metrics) if metrics is not None else None

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[GuardEvent]:
        keys = self.metrics if self.metrics is not None else list(metrics)
        bad = {}
        for key in keys:
            try:
                value = float(metrics[key])
            except (KeyError, TypeError, ValueError):
                continue  # absent, or not a number (a string note): nothing to judge
            if not math.isfinite(value):
                bad[key] = value
        if not bad:
            return []
        return [self.event(step, f"non-finite metrics: {', '.join(sorted(bad))}", **bad)]


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        RewardSpikeDetector,
        KLBoundDetector,
        LengthDriftDetector,
        EntropyCollapseDetector,
        RepetitionRiseDetector,
        ProxyGoldDivergenceDetector,
        NonFiniteDetector,
    )
}
