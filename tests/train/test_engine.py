"""Engine: schedule, accumulation, clipping, exact resume, non-finite handling, run folder."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import (
    collate,
    make_config,
    next_token_loss,
    synthetic_dataset,
    tiny_model,
)

from alignkit.errors import UserError
from alignkit.models.tiny import tiny_random_llama
from alignkit.train.engine import Engine, NonFiniteLossError
from alignkit.train.optim import build_optimizer, build_scheduler, lr_multiplier
from alignkit.train.run_dir import read_jsonl
from alignkit.train.sampler import EpochBatchSampler
from alignkit.train.train_config import TrainConfig


def train_losses(run_dir) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in r
    }


def fit(cfg, model=None, n=16, loss_fn=next_token_loss, **kwargs):
    engine = Engine(cfg, model if model is not None else tiny_model())
    result = engine.fit(synthetic_dataset(n=n), collate, loss_fn, **kwargs)
    return engine, result


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_warmup_then_decay(kind):
    lrs = [lr_multiplier(s, warmup=3, total=12, kind=kind) for s in range(12)]
    assert lrs[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert lrs[3] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(lrs[3:]))
    assert lr_multiplier(12, warmup=3, total=12, kind=kind) == pytest.approx(0.0, abs=1e-12)
    mid = lr_multiplier(3 + 9 // 2, warmup=3, total=12, kind=kind)
    assert 0.4 < mid < 0.6


def test_scale_peak_learning_rates_keeps_the_schedule_and_each_groups_own_peak(tmp_path):
    """Two groups (one with its own peak, like PPO's critic), linear decay: scaling sets each
    group's peak to its configured one × the scale, now and for the rest of the schedule;
    a second call is relative to the configured peak, not to the first call's."""
    model = tiny_model()
    cfg = make_config(
        tmp_path, lr_scheduler="linear", warmup_steps=0, warmup_ratio=0.0, learning_rate=1e-3
    )
    head = model.lm_head
    optimizer = build_optimizer(model, cfg, module_lrs={head: 4e-3})
    engine = Engine(cfg, model, optimizer=optimizer)
    engine.set_total_steps(10)
    engine.scheduler.step()
    engine.scheduler.step()  # two updates done: λ = 0.8
    engine.scale_peak_learning_rates(0.5)
    rates = sorted({group["lr"] for group in engine.optimizer.param_groups})
    assert rates == pytest.approx([0.5e-3 * 0.8, 2e-3 * 0.8])
    engine.scheduler.step()  # λ = 0.7, on the scaled peaks
    rates = sorted({group["lr"] for group in engine.optimizer.param_groups})
    assert rates == pytest.approx([0.5e-3 * 0.7, 2e-3 * 0.7])
    engine.scale_peak_learning_rates(0.25)
    assert sorted(set(engine.scheduler.base_lrs)) == pytest.approx([0.25e-3, 1e-3])
    engine.close()


def test_constant_and_scheduler_object():
    assert [lr_multiplier(s, warmup=2, total=10, kind="constant") for s in (2, 5, 9)] == [1, 1, 1]
    cfg = TrainConfig(learning_rate=0.1, warmup_steps=0, warmup_ratio=0.2, lr_scheduler="linear")
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1 / 3) and seen[2] == pytest.approx(0.1)  # ceil(0.2*10)=2
    assert seen[-1] == pytest.approx(0.1 / 8)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]


# ---------------------------------------------------------------- data order


def test_sampler_covers_each_epoch_and_shards_like_one_process():
    one = list(EpochBatchSampler(10, 4, seed=3, epoch=1))
    assert sorted(i for b in one for i in b) == list(range(10))
    assert one != list(EpochBatchSampler(10, 4, seed=3, epoch=2))
    assert one == list(EpochBatchSampler(10, 4, seed=3, epoch=1))
    ranks = [
        list(EpochBatchSampler(10, 2, seed=3, epoch=1, num_processes=2, rank=r)) for r in (0, 1)
    ]
    merged = [a + b for a, b in zip(*ranks, strict=True)]
    assert merged == one
    assert list(EpochBatchSampler(10, 4, seed=3, epoch=1, start=2)) == one[2:]
    tiny = [list(EpochBatchSampler(1, 2, seed=0, num_processes=3, rank=r)) for r in range(3)]
    assert all(len(b[0]) == 1 for b in tiny)


# ---------------------------------------------------------------- accumulation and clipping


def test_accumulation_matches_a_bigger_batch(tmp_path):
    big, _ = fit(make_config(tmp_path / "a", batch_size=4, max_steps=4))
    acc, _ = fit(
        make_config(tmp_path / "b", batch_size=2, gradient_accumulation_steps=2, max_steps=4)
    )
    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert list(la) == [1, 2, 3, 4]
    for step in la:
        assert la[step] == pytest.approx(lb[step], abs=1e-5)
    for pa, pb in zip(
        big.unwrapped_model.parameters(), acc.unwrapped_model.parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("max_norm", [0.05, 0.0])
def test_gradient_clipping(tmp_path, max_norm):
    cfg = make_config(tmp_path, max_grad_norm=max_norm)
    engine = Engine(cfg, tiny_model())
    engine.set_total_steps(3)
    norms = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    engine.optimizer.optimizer.register_step_pre_hook(hook)
    batch = collate(synthetic_dataset(n=4))
    results = []
    for _ in range(3):
        loss, _ = next_token_loss(engine.model, batch)
        results.append(engine.backward_and_step(loss))
    assert all(r.stepped and not r.skipped for r in results)
    assert all(r.grad_norm > 1.0 for r in results)  # reported: the norm before clipping
    expected = [max_norm] * 3 if max_norm else [r.grad_norm for r in results]
    assert norms == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- exact resume


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    # dropout on, so the restored RNG matters; 6 micro-batches per epoch, 2 per step:
    # the checkpoint at step 4 lies inside epoch 1, the crash inside a window of step 6.
    def model():
        return tiny_random_llama(seed=0, attention_dropout=0.1)[0]

    common = dict(max_steps=8, batch_size=2, gradient_accumulation_steps=2, save_every=4, n=12)

    def cfg_for(path, **kw):
        params = {k: v for k, v in common.items() if k != "n"}
        return make_config(path, **params, **kw)

    full, _ = fit(cfg_for(tmp_path / "full"), model(), n=12)

    calls = {"n": 0}

    def crashing_loss(m, batch):
        calls["n"] += 1
        if calls["n"] == 11:  # first micro-batch of step 6
            raise Interrupt
        return next_token_loss(m, batch)

    with pytest.raises(Interrupt):
        fit(cfg_for(tmp_path / "cut"), model(), n=12, loss_fn=crashing_loss)
    assert len(train_losses(tmp_path / "cut")) == 5
    resumed, result = fit(cfg_for(tmp_path / "cut", resume=True), model(), n=12)
    assert result.steps == 8
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "cut")
    assert list(a) == list(b) == list(range(1, 9))
    assert [a[s] for s in a] == pytest.approx([b[s] for s in b], abs=1e-6, rel=0)
    for pa, pb in zip(
        full.unwrapped_model.parameters(), resumed.unwrapped_model.parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    events = [e["event"] for e in read_jsonl(tmp_path / "cut" / "events.jsonl")]
    assert "resume" in events


def test_resume_without_checkpoint_starts_fresh_and_refuses_changed_data(tmp_path):
    _, result = fit(make_config(tmp_path, resume=True, max_steps=2))
    assert result.steps == 2
    with pytest.raises(UserError, match="global_batch_size changed"):
        fit(make_config(tmp_path, resume=True, max_steps=4, batch_size=2))


def test_existing_run_needs_resume(tmp_path):
    fit(make_config(tmp_path, max_steps=1))
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        Engine(make_config(tmp_path, max_steps=1), tiny_model())


class Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value, "history": torch.tensor([self.value, 2 * self.value])}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_extra_state_round_trips(tmp_path):
    cfg = make_config(tmp_path, max_steps=2)
    engine = Engine(cfg, tiny_model())
    counter, critic = Counter(), torch.nn.Linear(3, 1)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=0.1)
    critic(torch.ones(2, 3)).sum().backward()
    critic_opt.step()
    counter.value = 7
    for name, obj in {"counter": counter, "critic": critic, "critic_optim": critic_opt}.items():
        engine.register_state(name, obj)
    engine.set_total_steps(2)
    engine.state.extra["iteration"] = 3
    engine.save_checkpoint()

    again = Engine(make_config(tmp_path, max_steps=2, resume=True), tiny_model(seed=1))
    counter2, critic2 = Counter(), torch.nn.Linear(3, 1)
    critic_opt2 = torch.optim.AdamW(critic2.parameters(), lr=0.1)
    for name, obj in {"counter": counter2, "critic": critic2, "critic_optim": critic_opt2}.items():
        again.register_state(name, obj)
    again.set_total_steps(2)
    assert again.resume() is not None
    assert counter2.value == 7 and again.state.extra["iteration"] == 3
    torch.testing.assert_close(critic2.weight, critic.weight)
    assert critic_opt2.state_dict()["state"][0]["step"] == 1
    for pa, pb in zip(
        engine.unwrapped_model.parameters(), again.unwrapped_model.parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(TypeError):
        again.register_state("bad", object())


# ---------------------------------------------------------------- non-finite losses


def nan_on(calls_to_poison):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, metrics = next_token_loss(model, batch)
        if calls["n"] in calls_to_poison:
            loss = loss * float("nan")
        return loss, metrics

    return loss_fn


def test_nonfinite_loss_skips_the_update(tmp_path):
    cfg = make_config(tmp_path, max_steps=4)
    engine = Engine(cfg, tiny_model())
    engine.set_total_steps(4)
    batch = collate(synthetic_dataset(n=4))
    loss, _ = next_token_loss(engine.model, batch)
    engine.backward_and_step(loss)
    before = [p.detach().clone() for p in engine.unwrapped_model.parameters()]
    state_before = engine.optimizer.state_dict()["state"][0]["step"].item()
    loss, _ = next_token_loss(engine.model, batch)
    result = engine.backward_and_step(loss * float("inf"))
    assert result.stepped and result.skipped
    for p, q in zip(before, engine.unwrapped_model.parameters(), strict=True):
        assert torch.equal(p, q)
        assert q.grad is None
    assert engine.optimizer.state_dict()["state"][0]["step"].item() == state_before
    assert engine.state.step == 2 and engine.state.nonfinite_total == 1


def test_fit_logs_skips_and_continues(tmp_path):
    _, result = fit(make_config(tmp_path, max_steps=4), loss_fn=nan_on({2}))
    assert result.nonfinite_skips == 1 and result.steps == 4
    assert list(train_losses(tmp_path)) == [1, 3, 4]
    skips = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["event"] == "nonfinite_skip"]
    assert [(e["step"], e["consecutive"]) for e in skips] == [(2, 1)]


def test_too_many_nonfinite_in_a_row_stops_and_keeps_the_good_checkpoint(tmp_path):
    cfg = make_config(tmp_path, max_steps=10, save_every=2, max_consecutive_nonfinite=2)
    with pytest.raises(NonFiniteLossError) as info:
        fit(cfg, loss_fn=nan_on(set(range(3, 100))))
    message = str(info.value)
    assert (
        "step 5" in message
        and "3 steps in a row" in message
        and "max_consecutive_nonfinite=2" in message
    )
    assert "checkpoints/step-4" in message and "\n" not in message
    assert isinstance(info.value, UserError)
    events = read_jsonl(tmp_path / "events.jsonl")
    assert events[-1]["event"] == "stop" and events[-1]["step"] == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]
    engine = Engine(make_config(tmp_path, max_steps=10, resume=True), tiny_model(seed=3))
    engine.set_total_steps(10)
    engine.resume()
    assert engine.state.step == 4
    assert all(torch.isfinite(p).all() for p in engine.unwrapped_model.parameters())


# ---------------------------------------------------------------- the run folder


def test_run_folder_contents(tmp_path):
    cfg = make_config(
        tmp_path,
        max_steps=4,
        log_every=2,
        eval_every=2,
        save_every=2,
        report_to_tensorboard=True,
        keep_last_checkpoints=1,
    )
    evals = []

    def eval_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        evals.append(1)
        return {"loss": 1.5, "eval_extra": torch.tensor(2.0)}

    _, result = fit(cfg, eval_fn=eval_fn, progress_metric="accuracy")
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert list(train[0]) == ["step", "epoch", "loss", "accuracy", "grad_norm", "lr", "time"]
    assert train[0]["epoch"] == pytest.approx(0.5)
    assert all(math.isfinite(r["loss"]) for r in train)
    assert train[0]["lr"] == pytest.approx(2e-3 / 3)  # the lr step 2 used: 2/3 through warm-up
    evals_logged = [r for r in records if "eval_loss" in r]
    assert [(r["step"], r["eval_loss"], r["eval_extra"]) for r in evals_logged] == [
        (2, 1.5, 2.0),
        (4, 1.5, 2.0),
    ]
    assert len(evals) == 2
    assert result.steps == 4 and result.eval_metrics["eval_loss"] == 1.5
    assert result.train_metrics["step"] == 4
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"] == 4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-4"]
    assert result.checkpoint == tmp_path / "checkpoints" / "step-4"
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    assert (tmp_path / "model" / "model.safetensors").exists()
    from transformers import LlamaForCausalLM

    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    assert reloaded.config.hidden_size == 64
    events = [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")]
    assert events.count("checkpoint") == 2 and events[-1] == "finished"


def test_too_small_dataset_is_a_user_error(tmp_path):
    cfg = make_config(tmp_path, max_steps=None, batch_size=4, gradient_accumulation_steps=4)
    with pytest.raises(UserError, match="too small for one optimizer step"):
        fit(cfg, n=8)


def test_epochs_define_the_length(tmp_path):
    _, result = fit(make_config(tmp_path, max_steps=None, num_epochs=2, batch_size=4), n=10)
    assert result.steps == 6  # ceil(10/4) = 3 batches per epoch


def test_optimizer_uses_the_fused_adamw_kernel_on_cpu():
    from alignkit.train.optim import build_optimizer, fused_adamw_supported

    model = torch.nn.Linear(4, 4)
    assert build_optimizer(model, TrainConfig()).defaults["fused"] is True
    assert not fused_adamw_supported([torch.nn.Parameter(torch.zeros(2, device="meta"))])
