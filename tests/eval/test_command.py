"""`alignkit eval` from the command line: a trained tiny policy against its base."""

import json
import shlex

from alignkit.cli import main


def test_eval_command_writes_every_figure(tmp_path, capsys):
    dpo = tmp_path / "dpo"
    train = shlex.split("dpo --model tiny-random-llama --dataset demo --max-steps 2")
    train += shlex.split("--batch-size 2 --max-length 96 --max-prompt-length 64")
    assert main([*train, "--output-dir", str(dpo), "--no-report-to-tensorboard"]) == 0
    out = tmp_path / "eval.json"
    argv = ["eval", "--policy", "base=tiny-random-llama", "--policy", f"dpo={dpo / 'model'}"]
    argv += shlex.split("--prompts demo --limit 8 --max-new-tokens 8 --interval bootstrap")
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "win rate against base" in printed and "per user group" in printed
    result = json.loads(out.read_text())
    assert result["baselines"] == ["base"] and result["interval"] == "bootstrap"
    dpo_figures = result["methods"]["dpo"]
    keys = {"gold", "win_rate", "win_rate_low", "win_rate_high", "kl", "mean_length", "per_group"}
    assert keys <= set(dpo_figures)
    assert result["methods"]["base"]["kl"] == 0.0 and dpo_figures["kl"] > 0
    assert len(result["answers"]) == 8


def test_eval_mistakes_are_one_line(capsys):
    assert main(["eval", "--policy", "x=tiny-random-llama", "--baseline", "y"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'y'" in err and err.count("\n") == 1
    assert main(["eval", "--policy", "x=tiny-random-llama", "--policy", "x=tiny-random-llama"]) == 2
    assert "twice" in capsys.readouterr().err


def test_judge_specs():
    from alignkit.eval.command import judge_config

    assert judge_config("demo") == {"demo_judge": True}
    assert judge_config("gold:task/all.jsonl") == {"gold_judge": {"prompts": "task/all.jsonl"}}
    assert judge_config("mod:f") == {"reward_functions": ["mod:f"]}
