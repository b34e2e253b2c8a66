"""Every ready config in examples/ loads and validates, and runs a step on the tiny model."""

from pathlib import Path

import pytest

from alignkit.cli import TRAINERS, main
from alignkit.options import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def _command(path: Path) -> str:
    return next(c for c in TRAINERS if path.stem == c or path.stem.startswith(c + "_"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_runs_one_step_on_tiny_model(path, tmp_path):
    import importlib

    module, config_name, _, _ = TRAINERS[_command(path)]
    load_config(getattr(importlib.import_module(module), config_name), path)
    argv = [
        _command(path),
        "--config",
        str(path),
        "--model",
        "tiny-random-llama",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path / "run"),
        "--no-report-to-tensorboard",
    ]
    assert main(argv) == 0
