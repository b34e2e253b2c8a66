"""Build a `Guard` from its config section.

Keys (all optional)::

    policy: warn                 # warn | stop | rollback
    min_severity: warning        # info | warning | critical: events at or above act
    max_rollbacks: 3
    rollback_beta_factor: 2.0    # β ← β·factor after a rollback
    rollback_lr_factor: 0.5      # lr ← lr·factor after a rollback
    quiet_steps: 0               # a good checkpoint needs this many event-free steps before it
    detectors:                   # absent: all of them with defaults; present: only those listed
      reward_spike: {metric: objective/scores, window: 20, warmup: 10, z_threshold: 4.0}
      kl_bound: {metric: objective/kl, max_kl: 10.0}
      length_drift: {metric: completions/mean_length, max_relative_change: 0.5}
      entropy_collapse: {metric: objective/entropy, min_fraction: 0.3, floor: null}
      repetition: {metric: completions/repetition_rate, max_rate: 0.3}
      proxy_gold_divergence: {proxy: objective/scores, gold: gold/score, window_steps: 50}
      non_finite: {}             # `true` = defaults, `false` = off

Each detector's options are its constructor's keyword arguments (see `guard.detectors`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from alignkit.errors import UserError
from alignkit.guard.detectors import DETECTORS, Detector
from alignkit.guard.guard import Guard

GUARD_KEYS = (
    "policy",
    "min_severity",
    "max_rollbacks",
    "rollback_beta_factor",
    "rollback_lr_factor",
    "quiet_steps",
    "detectors",
)


def build_guard(config: Mapping[str, Any] | None = None) -> Guard:
    """A `Guard` from a config mapping (keys in the module docstring)."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(GUARD_KEYS))
    if unknown:
        raise UserError(
            f"unknown key(s) in guard config: {', '.join(unknown)}; expected {', '.join(GUARD_KEYS)}"
        )
    chosen = config.pop("detectors", None)
    if chosen is None:
        chosen = dict.fromkeys(DETECTORS, True)
    if not isinstance(chosen, Mapping):
        raise UserError("guard config 'detectors' must map detector names to their options")
    detectors = [
        build_detector(name, options) for name, options in chosen.items() if options is not False
    ]
    try:
        return Guard(detectors, **config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"guard config: {exc}") from exc


def build_detector(name: str, options: Any = True) -> Detector:
    """One detector by name; ``options`` is a mapping of its keyword arguments, or True/None."""
    if name not in DETECTORS:
        raise UserError(f"unknown guard detector '{name}'; expected one of {', '.join(DETECTORS)}")
    cls = DETECTORS[name]
    options = {} if options in (True, None) else options
    if not isinstance(options, Mapping):
        raise UserError(f"guard detector '{name}': options must be a mapping, got {options!r}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"guard detector '{name}': unknown option(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(accepted))}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"guard detector '{name}': {exc}") from exc
