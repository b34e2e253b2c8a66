"""--time-budget: the run measures a few steps, fixes its length to end within the budget
(more than one epoch when the time allows), and lays its schedule out over that length.

Time here is a fake clock tied to the step count (5 s a step), so nothing depends on how
fast this machine is."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import collate, make_config, next_token_loss, synthetic_dataset, tiny_model

from alignkit.errors import UserError
from alignkit.options import load_config
from alignkit.train.engine import Engine
from alignkit.train.optim import lr_multiplier, warmup_steps_for
from alignkit.train.run_dir import read_jsonl
from alignkit.train.time_budget import (
    MEASURED_STEPS,
    SAFETY_MARGIN,
    TimeBudget,
    parse_duration,
    steps_within_budget,
)
from alignkit.train.train_config import TrainConfig


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("1h30m", 5400.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "-5", "0", "5x", "m", "10m banana"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_bad_time_budget_is_one_config_error():
    with pytest.raises(UserError, match="time_budget"):
        load_config(TrainConfig, None, ["--time-budget", "soon"])
    assert load_config(TrainConfig, None, ["--time-budget", "10m"]).time_budget == "10m"


def test_steps_within_budget_hand_computed():
    # 100 s, 20 s gone, 4 steps done at 2 s each; reserve = margin 5 s:
    # floor((100 − 20 − 5) / 2) = 37 more
    assert steps_within_budget(budget=100, elapsed=20, steps_done=4, step_seconds=2) == 41
    # an evaluation (4 s) every 10 steps and a checkpoint (3 s) every 5: a step costs
    # 2 + 0.4 + 0.6 = 3 s; reserve 4 + 3 + 5 = 12 s: floor(68 / 3) = 22 more
    figures = dict(eval_seconds=4, eval_every=10, save_seconds=3, save_every=5)
    assert (
        steps_within_budget(budget=100, elapsed=20, steps_done=4, step_seconds=2, **figures) == 26
    )
    assert steps_within_budget(budget=100, elapsed=20, steps_done=4, step_seconds=2, cap=10) == 10
    # already over: stop where it is
    assert steps_within_budget(budget=100, elapsed=99, steps_done=4, step_seconds=2) == 4


def test_time_budget_fixes_the_length_once_after_the_measured_steps():
    now = {"t": 0.0}
    budget = TimeBudget(100.0, clock=lambda: now["t"])
    fixed = []
    for step in range(1, 10):
        now["t"] = 2.0 * step + (8.0 if step >= 1 else 0.0)  # the first step took 10 s
        fixed.append(budget.after_step(step))
    total = 1 + MEASURED_STEPS
    assert fixed[: total - 1] == [None] * (total - 1) and fixed[total:] == [None] * (9 - total)
    assert budget.step_seconds == pytest.approx(2.0)  # the first step's 10 s left out
    elapsed = 2.0 * total + 8.0
    assert fixed[total - 1] == total + int((100 - elapsed - SAFETY_MARGIN * 100) // 2)


def fake_clock_engine(cfg, seconds_per_step=5.0):
    engine = Engine(cfg, tiny_model())
    engine.run.elapsed = lambda: seconds_per_step * engine.state.step
    return engine


def test_a_budgeted_run_trains_for_what_fits_over_several_epochs(tmp_path):
    # 16 examples, batch 4: 4 steps an epoch. 200 s at 5 s a step; fixed after step 4
    # (20 s gone, margin 10 s): 4 + floor(170 / 5) = 38 steps, 9.5 epochs.
    cfg = make_config(
        tmp_path, max_steps=None, time_budget="200s", lr_scheduler="linear", save_every=0
    )
    engine = fake_clock_engine(cfg)
    result = engine.fit(synthetic_dataset(n=16), collate, next_token_loss)
    assert result.steps == 38
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 39))
    assert records[-1]["epoch"] == pytest.approx(9.5)
    # the schedule is laid out over the 38 steps: the last update is the schedule's last
    warmup = warmup_steps_for(cfg, 38)
    expected = cfg.learning_rate * lr_multiplier(37, warmup=warmup, total=38, kind="linear")
    assert records[-1]["lr"] == pytest.approx(expected)
    assert records[-1]["lr"] < 0.05 * cfg.learning_rate
    # the first 4 updates followed the planned one-epoch schedule (4 steps, 2 of warm-up):
    # the 4th used λ(3) = 1 − (3 − 2)/(4 − 2) = ½, and its record says so
    assert records[3]["lr"] == pytest.approx(0.5 * cfg.learning_rate)
    event = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["event"] == "time_budget"]
    assert event[0]["units"] == 38 and event[0]["unit_seconds"] == pytest.approx(5.0)


def test_max_steps_caps_a_budgeted_run(tmp_path):
    cfg = make_config(tmp_path, max_steps=10, time_budget="200s", save_every=0)
    assert fake_clock_engine(cfg).fit(synthetic_dataset(n=16), collate, next_token_loss).steps == 10


def test_a_run_that_slows_down_stops_within_the_budget(tmp_path):
    cfg = make_config(tmp_path, max_steps=None, time_budget="200s", save_every=0)
    engine = Engine(cfg, tiny_model())
    # 5 s a step while measured, then 20 s a step
    engine.run.elapsed = lambda: (
        5.0 * min(engine.state.step, 4) + 20.0 * max(engine.state.step - 4, 0)
    )
    result = engine.fit(synthetic_dataset(n=16), collate, next_token_loss)
    # fixed at 38, but at 20 s a step the budget is spent after step 11 (160 s; 185 > 200 − 0)
    assert result.steps < 38
    assert 20.0 * (result.steps - 4) + 20.0 <= 200
    stops = [e for e in read_jsonl(tmp_path / "events.jsonl") if "spent" in e["message"]]
    assert stops and stops[0]["units"] == result.steps


def test_a_resumed_budgeted_run_keeps_its_length_and_schedule(tmp_path):
    class Interrupt(Exception):
        pass

    common = dict(max_steps=None, time_budget="200s", lr_scheduler="linear", save_every=10)
    full = fake_clock_engine(make_config(tmp_path / "full", **common))
    full.fit(synthetic_dataset(n=16), collate, next_token_loss)

    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 25:  # inside step 25, after the checkpoint at step 20
            raise Interrupt
        return next_token_loss(model, batch)

    with pytest.raises(Interrupt):
        fake_clock_engine(make_config(tmp_path / "cut", **common)).fit(
            synthetic_dataset(n=16), collate, crashing_loss
        )
    resumed = fake_clock_engine(make_config(tmp_path / "cut", **common, resume=True))
    result = resumed.fit(synthetic_dataset(n=16), collate, next_token_loss)
    assert result.steps == 38
    a = {r["step"]: r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r}
    b = {r["step"]: r for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in r}
    assert list(a) == list(b)
    for step in a:
        assert a[step]["lr"] == pytest.approx(b[step]["lr"]), step
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6), step
