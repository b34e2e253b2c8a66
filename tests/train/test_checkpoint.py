"""Checkpoints: atomic writes, keep-last-K, weights_only loading, crash mid-write."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import collate, make_config, next_token_loss, synthetic_dataset, tiny_model

import alignkit.train.engine as engine_module
from alignkit.train.checkpoint import (
    CheckpointManager,
    default_load_model,
    default_save_model,
    load_torch,
    rng_state,
    save_torch,
    set_rng_state,
)
from alignkit.train.engine import Engine


def write_marker(value):
    def write(tmp: Path) -> None:
        (tmp / "value.txt").write_text(str(value))

    return write


def test_keep_last_k_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep_last=2)
    assert manager.latest() is None
    for step in (1, 2, 10, 3):
        manager.save(step, write_marker(step))
    assert [s for s, _ in manager.list()] == [3, 10]
    assert manager.latest().name == "step-10"
    manager.save(10, write_marker("again"))  # re-saving a step replaces it
    assert (manager.latest() / "value.txt").read_text() == "again"


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep_last=1)
    manager.save(1, write_marker(1))

    def crash(tmp: Path) -> None:
        (tmp / "value.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        manager.save(2, crash)
    assert manager.latest().name == "step-1"
    assert (manager.latest() / "value.txt").read_text() == "1"
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    # A hard kill leaves the temp folder behind: ignored, then cleaned by the next manager.
    partial = manager.begin(3)
    (partial / "value.txt").write_text("partial")
    assert manager.latest().name == "step-1"
    CheckpointManager(tmp_path / "ck", keep_last=1)
    assert not partial.exists()


def test_rng_state_round_trips_with_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave a cached gaussian in NumPy's state
    save_torch(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_torch(tmp_path / "rng.pt"))
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class ScalarHead(torch.nn.Module):
    """Not a Hugging Face model: saved as a safetensors state dict, with tied weights."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.out = torch.nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight
        self.score = torch.nn.Linear(4, 1)


def test_default_model_io_for_plain_and_hf_models(tmp_path):
    a, b = ScalarHead(), ScalarHead()
    default_save_model(a, tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").exists()
    default_load_model(b, tmp_path / "plain")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    hf_a, hf_b = tiny_model(0), tiny_model(1)
    default_save_model(hf_a, tmp_path / "hf")
    default_load_model(hf_b, tmp_path / "hf")
    for pa, pb in zip(hf_a.parameters(), hf_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(RuntimeError, match="does not match the model"):
        default_load_model(torch.nn.Linear(2, 2), tmp_path / "plain")


def test_engine_checkpoint_files_load_with_weights_only(tmp_path):
    engine = Engine(make_config(tmp_path, max_steps=2, save_every=1), tiny_model())
    engine.fit(synthetic_dataset(n=8), collate, next_token_loss)
    ckpt = tmp_path / "checkpoints" / "step-2"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [
        "model",
        "optimizer.pt",
        "rng_state_0.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    for name in ("optimizer.pt", "rng_state_0.pt", "scheduler.pt"):
        torch.load(ckpt / name, weights_only=True)


def test_engine_crash_while_saving_leaves_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, max_steps=4, save_every=2)
    real_save = engine_module.save_torch

    def flaky_save(obj, path):
        if Path(path).name == "optimizer.pt" and "step-4" in str(path):
            raise OSError("killed mid-write")
        real_save(obj, path)

    monkeypatch.setattr(engine_module, "save_torch", flaky_save)
    with pytest.raises(OSError, match="killed mid-write"):
        Engine(cfg, tiny_model()).fit(synthetic_dataset(n=16), collate, next_token_loss)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    resumed = Engine(
        make_config(tmp_path, max_steps=4, save_every=2, resume=True), tiny_model(seed=5)
    )
    result = resumed.fit(synthetic_dataset(n=16), collate, next_token_loss)
    assert result.steps == 4
