"""A run folder written by a trainer, given where a model is expected (--model, --reward-model,
--critic-model, eval's --policy), stands for the final model inside it (``model/``)."""

from __future__ import annotations

import pytest
import torch

from alignkit.errors import UserError
from alignkit.models import loading
from alignkit.models.heads import ScalarHeadModel, load_scalar_model
from alignkit.models.loading import load_causal_lm, resolve_model
from alignkit.models.tiny import tiny_random_llama


@pytest.fixture(autouse=True)
def _announce_every_time(monkeypatch):
    """Each test sees its own info lines (they are printed once per folder per process)."""
    monkeypatch.setattr(loading, "_ANNOUNCED", set(), raising=False)


def write_run_folder(run, *, reward: bool = False):
    """What a finished `alignkit sft` (or, with ``reward``, `alignkit rm`) leaves behind."""
    model, tokenizer = tiny_random_llama(seed=3)
    saved = ScalarHeadModel.from_causal_lm(model, kind="reward", seed=3) if reward else model
    saved.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text("model: tiny-random-llama\n")
    (run / "metrics.jsonl").write_text("")
    return saved


def test_a_run_folder_given_as_model_loads_its_final_model_and_says_so(tmp_path, capsys):
    run = tmp_path / "runs" / "sft"
    saved = write_run_folder(run)
    capsys.readouterr()
    source = resolve_model(str(run))
    assert source.location == str(run / "model")
    loaded, _ = load_causal_lm(str(run))
    assert torch.equal(loaded.get_input_embeddings().weight, saved.get_input_embeddings().weight)
    lines = [line for line in capsys.readouterr().err.splitlines() if "alignkit" in line]
    assert lines == [f"alignkit: {run} is a run folder: using its final model {run / 'model'}"]


def test_a_reward_model_run_folder_loads_as_the_reward_model(tmp_path, capsys):
    run = tmp_path / "rm"
    saved = write_run_folder(run, reward=True)
    model, _ = load_scalar_model(str(run))
    assert torch.equal(model.head.weight, saved.head.weight)
    assert f"using its final model {run / 'model'}" in capsys.readouterr().err


def test_a_run_folder_without_a_final_model_names_its_last_checkpoint(tmp_path):
    run = tmp_path / "cut"
    run.mkdir()
    (run / "config.yaml").write_text("model: tiny-random-llama\n")
    (run / "checkpoints" / "step-4" / "model").mkdir(parents=True)
    (run / "checkpoints" / "step-2" / "model").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        resolve_model(str(run))
    message = str(err.value)
    assert message.startswith(f"{run} is a run folder without a final model/")
    assert str(run / "checkpoints" / "step-4" / "model") in message and "--resume" in message


def test_a_plain_folder_is_still_not_a_model_folder(tmp_path):
    with pytest.raises(UserError, match=r"is not a model folder \(no config.json in it\)"):
        resolve_model(str(tmp_path))


def test_grpo_takes_the_rm_run_folder_as_its_reward_model(tmp_path, capsys):
    from alignkit.cli import main

    run = tmp_path / "rm"
    write_run_folder(run, reward=True)
    argv = ["grpo", "--model", "tiny-random-llama", "--dataset", "demo"]
    argv += ["--reward-model", str(run), "--output-dir", str(tmp_path / "grpo")]
    argv += ["--max-steps", "1", "--batch-size", "2", "--num-generations", "2"]
    argv += ["--max-new-tokens", "4", "--eval-fraction", "0", "--no-report-to-tensorboard"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"alignkit: {run} is a run folder: using its final model {run / 'model'}" in captured.err
    assert "alignkit grpo: 1 iterations" in captured.out
