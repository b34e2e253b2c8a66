"""--resume on a run folder another trainer wrote is refused with one line naming both,
before anything in the folder is touched."""

from __future__ import annotations

import yaml

from alignkit.cli import main
from alignkit.options import load_config
from alignkit.train.dpo import DPOConfig
from alignkit.train.run_dir import RunDirectory

TINY = ["--model", "tiny-random-llama", "--dataset", "demo", "--batch-size", "2"]
TINY += ["--max-length", "64", "--eval-fraction", "0", "--no-report-to-tensorboard"]


def folder_contents(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_config_yaml_names_the_trainer_and_still_loads_as_a_config(tmp_path):
    run = RunDirectory(tmp_path, tensorboard=False)
    cfg = DPOConfig(model="tiny-random-llama", dataset="demo", max_steps=3)
    run.write_config(cfg)
    assert run.trainer() == "dpo"
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# alignkit dpo")
    assert yaml.safe_load(text)["max_steps"] == 3
    assert load_config(DPOConfig, tmp_path / "config.yaml") == cfg


def test_resume_of_another_trainers_folder_names_both_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["dpo", *TINY, "--max-steps", "1", "--output-dir", str(out)]) == 0
    before = folder_contents(out)
    capsys.readouterr()
    assert main(["sft", *TINY, "--max-steps", "2", "--output-dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"alignkit: error: cannot resume {out}: it is a run of alignkit dpo")
    assert "not of alignkit sft" in err
    assert folder_contents(out) == before
