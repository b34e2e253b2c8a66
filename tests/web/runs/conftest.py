"""Real run folders for the dashboard's tests, made once per session on the tiny model:
a GRPO run (rollouts every iteration) and a DPO run on four pairs, both inside a
pipeline-shaped folder (summary.json, report.html, a done.json per stage), and a copy of
the GRPO run standing alone to overlay on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "I can't say."},
    {"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "It is 7, I think, maybe."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Colour colour colour."},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."},
]

REWARD = '''
def letters(prompts, responses):
    """Fraction of lowercase letters: something the tiny model can move."""
    return [sum(c.isascii() and c.islower() for c in r) / max(len(r), 1) for r in responses]
'''


def _grpo(output_dir: Path, reward_file: Path) -> None:
    from alignkit.train.grpo import GRPOConfig, GRPOTrainer

    GRPOTrainer(
        GRPOConfig(
            model="tiny-random-llama",
            dataset="demo",
            output_dir=str(output_dir),
            max_steps=3,
            batch_size=2,
            num_generations=2,
            max_new_tokens=8,
            learning_rate=3e-3,
            rollouts_every=1,
            save_every=2,
            report_to_tensorboard=False,
            reward={"reward_functions": [f"{reward_file}:letters"]},
        )
    ).train()


def _dpo(output_dir: Path, data: Path) -> None:
    from alignkit.train.dpo import DPOConfig, DPOTrainer

    DPOTrainer(
        DPOConfig(
            model="tiny-random-llama",
            dataset=str(data),
            eval_dataset=str(data),
            output_dir=str(output_dir),
            max_steps=3,
            batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            log_every=1,
            save_every=0,
            report_to_tensorboard=False,
        )
    ).train()


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    data = root / "data" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    reward_file = root / "data" / "reward.py"
    reward_file.write_text(REWARD)
    pipe = root / "pipe"
    _grpo(pipe / "grpo" / "run", reward_file)
    _dpo(pipe / "dpo" / "run", data)
    for stage in ("grpo", "dpo"):
        (pipe / stage / "done.json").write_text(json.dumps({"stage": stage}))
    (pipe / "pipeline.json").write_text(json.dumps({"model": "tiny-random-llama"}))
    (pipe / "summary.json").write_text(json.dumps({"methods": {"grpo": {"win_rate": 0.5}}}))
    (pipe / "report.html").write_text(
        "<!doctype html><title>report</title><h1>Pipeline report</h1>"
    )
    shutil.copytree(pipe / "grpo" / "run", root / "grpo-copy")
    return root
