"""The whole pipeline on the real default model: SFT → reward model → PPO and GRPO, and DPO.

Minutes of CPU: `make test-slow` (kept out of `make test`).
"""

import shlex

import pytest

from alignkit.cli import main
from alignkit.train.run_dir import read_jsonl

pytestmark = pytest.mark.slow

SHORT = ["--max-length", "128", "--max-prompt-length", "64", "--no-report-to-tensorboard"]


def test_three_stage_pipeline_on_the_default_model(tmp_path):
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    sft_args = shlex.split("sft --dataset demo --max-steps 4 --batch-size 2")
    assert main([*sft_args, "--output-dir", str(sft), *SHORT]) == 0
    rm_args = ["rm", "--model", str(sft / "model"), *shlex.split("--dataset demo --max-steps 4")]
    assert main([*rm_args, "--batch-size", "2", "--output-dir", str(rm), *SHORT]) == 0
    online = ["--model", str(sft / "model"), "--reward-model", str(rm / "model")]
    online += shlex.split("--dataset demo --max-steps 2 --batch-size 2 --max-new-tokens 16")
    online += ["--gold-reward", "{demo_judge: true}", *SHORT[4:]]
    ppo = ["--num-minibatches", "1", "--ppo-epochs", "1"]
    assert main(["ppo", *online, *ppo, "--output-dir", str(tmp_path / "ppo")]) == 0
    grpo = ["--num-generations", "2", "--output-dir", str(tmp_path / "grpo")]
    assert main(["grpo", *online, *grpo]) == 0
    for name in ("ppo", "grpo"):
        last = [r for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "objective/kl" in r][-1]
        assert {"objective/scores", "objective/kl", "gold/score"} <= set(last)


def test_dpo_on_the_default_model_widens_the_margin(tmp_path):
    out = tmp_path / "dpo"
    dpo = shlex.split("dpo --dataset demo --max-steps 10 --batch-size 4 --learning-rate 5e-6")
    assert main([*dpo, "--eval-every", "10", "--output-dir", str(out), *SHORT]) == 0
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_rewards/margins" in r]
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]
