import json
import shlex
import subprocess
import sys

import pytest

from alignkit.cli import main
from alignkit.data import demo_path
from alignkit.train.run_dir import read_jsonl

BAD_FILES = {
    "missing field": (
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n',
        "preference",
    ),
    "wrong type": ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', "preference"),
    "empty response": ('{"prompt": "p", "chosen": "", "rejected": "b"}\n', "preference"),
    "identical": ('{"prompt": "p", "chosen": "same", "rejected": "same"}\n', "preference"),
    "does not parse": (
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n',
        "preference",
    ),
    "unknown format": ('{"question": "p", "answer": "a"}\n', None),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_gives_one_line_and_exit_2(case, tmp_path, capsys):
    text, fmt = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    argv = ["data", "check", str(path)] + (["--format", fmt] if fmt else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alignkit: error: {path}:")
    assert "\n" not in err and "Traceback" not in err


def test_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "UTF-8" in err and err.count("\n") == 1


def test_drop_invalid_reports_and_succeeds(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "x", "rejected": "x"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["data", "check", str(path), "--drop-invalid"]) == 0
    out = capsys.readouterr().out
    assert "dropped" in out.lower()


def test_data_check_demo_with_tokenizer(capsys):
    assert (
        main(["data", "check", str(demo_path("preference")), "--model", "tiny-random-llama"]) == 0
    )
    out = capsys.readouterr().out
    assert "preference" in out and "p90" in out


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "data", "check", "/no/such/file.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("alignkit: error:")
    assert "Traceback" not in result.stderr


def test_trainer_command_runs_and_summarises(tmp_path, capsys):
    out = tmp_path / "run"
    argv = shlex.split("dpo --model tiny-random-llama --dataset demo --max-steps 2 --batch-size 2")
    argv += ["--output-dir", str(out)]
    argv += shlex.split("--max-length 96 --max-prompt-length 64 --no-report-to-tensorboard")
    assert main(argv) == 0
    assert "alignkit dpo: 2 steps" in capsys.readouterr().out
    assert (out / "model" / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    # The same folder again without --resume is a one-line user error.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_trainer_config_errors_are_one_line(capsys):
    assert main(["rm", "--learning-rate", "-1", "--dataset", "demo"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and err.count("\n") == 1
    assert main(["sft", "--stesp", "3"]) == 2
    assert "unknown option" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_online_commands_run_with_a_trained_reward_model(command, tmp_path, capsys):
    rm_dir = tmp_path / "rm"
    rm = shlex.split("rm --model tiny-random-llama --dataset demo --max-steps 2 --batch-size 2")
    rm += shlex.split("--no-report-to-tensorboard --max-length 96 --max-prompt-length 64")
    assert main([*rm, "--output-dir", str(rm_dir)]) == 0
    out = tmp_path / command
    argv = [command, *shlex.split("--model tiny-random-llama --dataset demo")]
    argv += ["--reward-model", str(rm_dir / "model"), "--output-dir", str(out)]
    argv += shlex.split("--max-steps 2 --batch-size 2 --max-new-tokens 8 --rollouts-every 1")
    argv += ["--no-report-to-tensorboard", "--reward", "{shaping: {evasion: {weight: 0.5}}}"]
    if command == "ppo":
        argv += ["--num-minibatches", "1", "--ppo-epochs", "1"]
    assert main(argv) == 0
    assert f"alignkit {command}: 2 iterations" in capsys.readouterr().out
    assert (out / "rollouts.jsonl").is_file() and (out / "model" / "config.json").is_file()
    record = [r for r in read_jsonl(out / "metrics.jsonl") if "objective/kl" in r][-1]
    assert {"rewards/reward_model", "rewards/evasion", "objective/kl"} <= set(record)


def test_online_command_without_reward_is_one_line(capsys):
    assert main(["grpo", "--dataset", "demo", "--model", "tiny-random-llama"]) == 2
    err = capsys.readouterr().err
    assert "reward" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "flags", [["--max-new-tokens", "0"], ["--temperature", "-1"]], ids=["no-tokens", "temperature"]
)
def test_chat_bad_sampling_flags_are_one_line(flags, capsys):
    code = main(["chat", "hi", "--model", "tiny-random-llama", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("alignkit: error:")
