"""Watching an online run: KL controllers, reward-hacking and instability detectors, and the
`Guard` that turns their events into continue / stop / rollback."""

from alignkit.guard.builder import build_detector, build_guard
from alignkit.guard.detectors import (
    DETECTORS,
    Detector,
    EntropyCollapseDetector,
    KLBoundDetector,
    LengthDriftDetector,
    NonFiniteDetector,
    ProxyGoldDivergenceDetector,
    RepetitionRiseDetector,
    RewardSpikeDetector,
    slope_t_statistic,
)
from alignkit.guard.events import GuardEvent, Severity
from alignkit.guard.guard import Guard, GuardDecision
from alignkit.guard.kl_controllers import (
    AdaptiveKLController,
    FixedKLController,
    build_kl_controller,
)

__all__ = [
    "DETECTORS",
    "AdaptiveKLController",
    "Detector",
    "EntropyCollapseDetector",
    "FixedKLController",
    "Guard",
    "GuardDecision",
    "GuardEvent",
    "KLBoundDetector",
    "LengthDriftDetector",
    "NonFiniteDetector",
    "ProxyGoldDivergenceDetector",
    "RepetitionRiseDetector",
    "RewardSpikeDetector",
    "Severity",
    "build_detector",
    "build_guard",
    "build_kl_controller",
    "slope_t_statistic",
]
