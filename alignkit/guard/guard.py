"""The guard: runs the detectors every step and tells the trainer what to do about them.

Policies (the seeds' answer to instability is "checkpointing and rollback"):

* ``warn``: record the events, carry on;
* ``stop``: stop the run at the first triggering event;
* ``rollback``: go back to the last good checkpoint and continue with a tighter leash —
  β multiplied by ``rollback_beta_factor`` and the learning rate by ``rollback_lr_factor`` —
  at most ``max_rollbacks`` times; after that, or with no good checkpoint yet, stop.

Events of severity ≥ ``min_severity`` trigger the policy; others are only recorded.

The trainer's side of the contract::

    decision = guard.observe(step, metrics)        # every iteration, after logging metrics
    write decision.events to events.jsonl
    if decision.action == "stop": save, stop
    if decision.action == "rollback":
        beta_before = kl_controller.value
        restore the checkpoint of step decision.rollback_to (model, optimizer, KL
        controller — NOT the guard: it keeps its rollback count and has rewound its own
        detectors)
        kl_controller.value = decision.beta_after_rollback(beta_before, kl_controller.value)
        engine.scale_peak_learning_rates(decision.lr_scale)
    after saving a checkpoint at step s: guard.mark_good(s)   (good once step s + 1 is clean)
    guard.state_dict() goes into every checkpoint, for resuming after a crash
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alignkit.guard.detectors import Detector
from alignkit.guard.events import GuardEvent, Severity, severity_rank

Policy = Literal["warn", "stop", "rollback"]
POLICIES: tuple[str, ...] = ("warn", "stop", "rollback")
Action = Literal["continue", "stop", "rollback"]


@dataclass
class GuardDecision:
    """What the trainer does after a step.

    On a rollback, ``beta_factor`` multiplies β (see :meth:`beta_after_rollback`) and
    ``lr_scale`` is the factor on the *configured* peak learning rate: the product of
    ``rollback_lr_factor`` over every rollback so far, so it does not depend on which
    checkpoint's schedule was restored."""

    action: Action = "continue"
    events: list[GuardEvent] = field(default_factory=list)
    reason: str = ""
    rollback_to: int | None = None
    beta_factor: float = 1.0
    lr_scale: float = 1.0

    def beta_after_rollback(self, beta_before: float, beta_restored: float) -> float:
        """β to continue with: the larger of the β the run had reached and the restored
        checkpoint's, × ``beta_factor`` (an adaptive β that rose while the policy drifted
        keeps that rise; a rollback never loosens the leash)."""
        return max(beta_before, beta_restored) * self.beta_factor


class Guard:
    """Runs ``detectors`` on each step's metrics and applies ``policy`` to their events.

    A checkpoint is *good* when the trainer marked it (`mark_good`), no triggering event
    was raised in the ``quiet_steps + 1`` steps up to it, and the next step's metrics —
    the first samples of the policy it holds — raised none either. (Step s's metrics
    describe the policy saved at s − 1: a checkpoint counted good at once would hold the
    very policy that drifts, and a rollback to it would replay its samples and trigger
    again.) On rollback the guard rewinds its
    detectors to their state at that good step, so their windows and baselines describe
    the trajectory being resumed, not the one abandoned (the proxy–gold trend detector then
    starts a fresh window: see `Detector.after_rollback`).
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        policy: Policy = "warn",
        *,
        min_severity: Severity = "warning",
        max_rollbacks: int = 3,
        rollback_beta_factor: float = 2.0,
        rollback_lr_factor: float = 0.5,
        quiet_steps: int = 0,
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        severity_rank(min_severity)
        if max_rollbacks < 0 or quiet_steps < 0:
            raise ValueError("max_rollbacks and quiet_steps must be non-negative")
        if rollback_beta_factor <= 0 or rollback_lr_factor <= 0:
            raise ValueError("rollback factors must be positive")
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"two detectors share a name: {names}; state would collide")
        self.detectors = list(detectors)
        self.policy, self.min_severity = policy, min_severity
        self.max_rollbacks, self.quiet_steps = max_rollbacks, quiet_steps
        self.rollback_beta_factor, self.rollback_lr_factor = (
            rollback_beta_factor,
            rollback_lr_factor,
        )
        self.events: list[GuardEvent] = []  # everything seen by this process, for reports
        self.rollbacks = 0
        self.last_good_step: int | None = None
        self._pending_step: int | None = None  # marked, its policy not yet sampled
        self._pending_detector_states: dict[str, Any] | None = None
        self.lr_scale = 1.0  # product of the learning-rate factors of the rollbacks so far
        self._last_trigger_step: int | None = None
        self._good_detector_states: dict[str, Any] | None = None

    def triggers(self, event: GuardEvent) -> bool:
        return severity_rank(event.severity) >= severity_rank(self.min_severity)

    def observe(self, step: int, metrics: Mapping[str, float]) -> GuardDecision:
        events = [e for d in self.detectors for e in d.observe(step, metrics)]
        self.events.extend(events)
        triggering = [e for e in events if self.triggers(e)]
        pending, self._pending_step = self._pending_step, None
        if not triggering:
            if pending is not None and step > pending:  # its policy behaved: good
                self.last_good_step = pending
                self._good_detector_states = self._pending_detector_states
            return GuardDecision("continue", events)
        self._last_trigger_step = step
        reason = "; ".join(f"{e.detector}: {e.message}" for e in triggering)
        if self.policy == "warn":
            return GuardDecision("continue", events, reason)
        if self.policy == "stop":
            return GuardDecision("stop", events, reason)
        if self.rollbacks >= self.max_rollbacks:
            return GuardDecision(
                "stop", events, f"{reason} (rollback limit {self.max_rollbacks} reached)"
            )
        if self.last_good_step is None:
            return GuardDecision("stop", events, f"{reason} (no good checkpoint to roll back to)")
        return self._rollback(events, reason)

    def _rollback(self, events: list[GuardEvent], reason: str) -> GuardDecision:
        self.rollbacks += 1
        self.lr_scale *= self.rollback_lr_factor
        self._restore_detectors(self._good_detector_states)
        for detector in self.detectors:
            detector.after_rollback()
        self._last_trigger_step = None  # steps after the good one are replayed afresh
        return GuardDecision(
            "rollback",
            events,
            reason,
            rollback_to=self.last_good_step,
            beta_factor=self.rollback_beta_factor,
            lr_scale=self.lr_scale,
        )

    def mark_good(self, step: int) -> bool:
        """The trainer saved a checkpoint at ``step``; True if it is a candidate: the guard
        counts it good once the next step's metrics raise nothing."""
        recent_trigger = (
            self._last_trigger_step is not None
            and self._last_trigger_step >= step - self.quiet_steps
        )
        if recent_trigger:
            return False
        self._pending_step = step
        self._pending_detector_states = self._detector_states()
        return True

    def _detector_states(self) -> dict[str, Any]:
        return copy.deepcopy({d.name: d.state_dict() for d in self.detectors})

    def _restore_detectors(self, states: Mapping[str, Any] | None) -> None:
        for detector in self.detectors:
            if states is not None and detector.name in states:
                detector.load_state_dict(copy.deepcopy(states[detector.name]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "detectors": self._detector_states(),
            "rollbacks": self.rollbacks,
            "last_good_step": self.last_good_step,
            "lr_scale": self.lr_scale,
            "last_trigger_step": self._last_trigger_step,
            "good_detector_states": copy.deepcopy(self._good_detector_states),
            "pending_step": self._pending_step,
            "pending_detector_states": copy.deepcopy(self._pending_detector_states),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._restore_detectors(state["detectors"])
        self.rollbacks = int(state["rollbacks"])
        self.last_good_step = state["last_good_step"]
        self.lr_scale = float(state["lr_scale"])
        self._last_trigger_step = state["last_trigger_step"]
        self._good_detector_states = copy.deepcopy(state["good_detector_states"])
        self._pending_step = state.get("pending_step")  # absent in older checkpoints
        self._pending_detector_states = copy.deepcopy(state.get("pending_detector_states"))
