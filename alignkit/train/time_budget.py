"""A wall-clock budget for a run: measure a few steps, then fix how many steps fit.

`--time-budget 10m` on any trainer: the first steps run on the schedule the config would
give; after :data:`MEASURED_STEPS` steps past the first (which pays for warm-up work), the
run fixes its number of steps — more than one epoch over small data if the time allows,
at most ``max_steps`` when that is set — so that it ends within the budget, and the
learning-rate schedule is laid out again over that number (warm-up and decay reach their
ends; nothing is cut off). Evaluation and checkpoints cost time too: each one's measured
cost is spread over the steps between them, and the final evaluation and save are held in
reserve. If a run slows down later, it stops before the budget is spent, with its final
evaluation and save.

Units are optimizer steps for SFT, reward-model and DPO training, rollout iterations for
PPO and GRPO.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator

MEASURED_STEPS = 3  # steps timed after the first, before the number of steps is fixed
SAFETY_MARGIN = 0.05  # fraction of the budget kept free for what was not measured

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smh])")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1.5h" or "1h30m"; ValueError for anything else."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not parts or _PART.sub("", cleaned).strip():
            raise ValueError(
                f"not a duration: {text!r} (use seconds, or a number with s, m or h: 90s, 10m, 1.5h)"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def steps_within_budget(
    *,
    budget: float,
    elapsed: float,
    steps_done: int,
    step_seconds: float,
    eval_seconds: float = 0.0,
    eval_every: int = 0,
    save_seconds: float = 0.0,
    save_every: int = 0,
    margin: float = SAFETY_MARGIN,
    cap: int | None = None,
) -> int:
    """The total number of steps that ends within the budget:

        cost per further step   c = t + e/E + s/S          (E, S: eval_every, save_every)
        time held in reserve    R = e + s + margin·budget   (the final evaluation and save)
        total                   n + floor((budget − elapsed − R) / c)

    with t the measured seconds a step, e and s the measured seconds of an evaluation and
    a checkpoint (0 where none was measured yet), n the steps done. At least n (the run
    stops now), at most ``cap``.
    """
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be positive, got {step_seconds}")
    per_step = step_seconds
    if eval_every:
        per_step += eval_seconds / eval_every
    if save_every:
        per_step += save_seconds / save_every
    reserve = eval_seconds + save_seconds + margin * budget
    more = max(0, math.floor((budget - elapsed - reserve) / per_step))
    total = steps_done + more
    return total if cap is None else min(total, cap)


class TimeBudget:
    """Watches a run's steps against its budget.

    Call :meth:`after_step` after each step with the steps done so far: it returns the
    fixed number of steps once, after the measurement, and None otherwise.
    :meth:`spent` says whether the run must stop now to end within the budget. The
    trainer times its evaluations and checkpoints with :meth:`timed`.
    """

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        eval_every: int = 0,
        save_every: int = 0,
        cap: int | None = None,
    ):
        self.seconds, self.clock = seconds, clock
        self.eval_every, self.save_every, self.cap = eval_every, save_every, cap
        self.eval_seconds = 0.0  # the last evaluation's, once there was one
        self.save_seconds = 0.0  # the last checkpoint's
        self.step_seconds: float | None = None  # measured, once fixed
        self._first_step_end: tuple[int, float] | None = None

    def after_step(self, steps_done: int) -> int | None:
        """The run's fixed number of steps, the first time enough steps were timed."""
        now = self.clock()
        if self.step_seconds is not None:
            return None
        if self._first_step_end is None:
            self._first_step_end = (steps_done, now)
            return None
        first_steps, first_time = self._first_step_end
        if steps_done - first_steps < MEASURED_STEPS:
            return None
        self.step_seconds = max((now - first_time) / (steps_done - first_steps), 1e-9)
        return steps_within_budget(
            budget=self.seconds,
            elapsed=now,
            steps_done=steps_done,
            step_seconds=self.step_seconds,
            eval_seconds=self.eval_seconds,
            eval_every=self.eval_every,
            save_seconds=self.save_seconds,
            save_every=self.save_every,
            cap=self.cap,
        )

    def spent(self) -> bool:
        """True when another step (plus the final evaluation and save) would overrun."""
        step = self.step_seconds or 0.0
        reserve = self.eval_seconds + self.save_seconds
        return self.clock() + step + reserve > self.seconds

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """``with budget.timed("eval"): ...`` records the seconds an evaluation (or "save")
        took."""
        if kind not in ("eval", "save"):
            raise ValueError(f"kind must be 'eval' or 'save', got {kind!r}")
        start = self.clock()
        try:
            yield
        finally:
            setattr(self, f"{kind}_seconds", self.clock() - start)
