"""A run folder that cannot be written (disk full, read-only, no permission) is one line
naming the folder, exit 2, and the last complete checkpoint stays intact and resumable.
Also the checkpoint folder's own crash windows: a re-save and a prune cut short."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import alignkit.train.checkpoint as checkpoint_module
import alignkit.train.engine as engine_module
from alignkit.cli import main
from alignkit.train.checkpoint import CheckpointManager
from alignkit.train.run_dir import read_jsonl

SFT = ["sft", "--model", "tiny-random-llama", "--dataset", "demo", "--batch-size", "2"]
SFT += ["--gradient-accumulation-steps", "1", "--max-length", "64", "--eval-fraction", "0"]
SFT += ["--no-report-to-tensorboard", "--max-steps", "4", "--save-every", "2", "--log-every", "1"]


def sft(out: Path, *extra: str) -> int:
    return main([*SFT, "--output-dir", str(out), *extra])


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def the_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("alignkit: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def resume_works(out: Path, capsys) -> None:
    """The folder resumes from its last complete checkpoint and finishes."""
    assert sft(out, "--resume") == 0, capsys.readouterr().err
    events = read_jsonl(out / "events.jsonl")
    assert [e["message"] for e in events if e["event"] == "resume"] == [
        f"resumed from {out / 'checkpoints' / 'step-2'}"
    ]
    assert (out / "model" / "config.json").is_file()


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = engine_module.save_torch

    def disk_full_at_step_4(obj, path):
        if "step-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(engine_module, "save_torch", disk_full_at_step_4)
    assert sft(out) == 2
    line = the_error(capsys)
    assert line.startswith(
        f"alignkit: error: cannot write to the run folder {out}: no space left on the device "
        "(disk full)"
    )
    assert line.endswith(f"; the last complete checkpoint is still {out}/checkpoints/step-2")
    assert checkpoints(out) == ["step-2"]
    monkeypatch.undo()
    resume_works(out, capsys)


def test_read_only_file_system_while_renaming_a_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_replace = os.replace

    def read_only_at_step_4(src, dst):
        if str(dst).endswith("step-4"):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", read_only_at_step_4)
    assert sft(out) == 2
    line = the_error(capsys)
    assert line.startswith(
        f"alignkit: error: cannot write to the run folder {out}: read-only file system"
    )
    monkeypatch.undo()
    assert checkpoints(out) == ["step-2"]
    resume_works(out, capsys)


def test_read_only_file_system_while_logging_metrics(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_open = Path.open

    def read_only_after_step_2(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode and (out / "checkpoints/step-2").is_dir():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only_after_step_2)
    assert sft(out) == 2
    assert the_error(capsys).startswith(
        f"alignkit: error: cannot write to the run folder {out}: read-only file system "
        f"({out / 'metrics.jsonl'})"
    )
    monkeypatch.undo()
    assert checkpoints(out) == ["step-2"]
    resume_works(out, capsys)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes through chmod 0o555; the ENOSPC/EROFS tests above cover the error path",
)
def test_a_read_only_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert sft(out) == 2
        assert the_error(capsys).startswith(
            f"alignkit: error: cannot write to the run folder {out}: permission denied"
        )
    finally:
        out.chmod(0o755)


def test_a_resave_cut_between_its_two_renames_keeps_the_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(3, lambda d: (d / "value.txt").write_text("complete"))
    # what a crash leaves after `commit` moved step-3 aside and before the new one took its place
    os.replace(tmp_path / "step-3", tmp_path / ".tmp-old-step-3")
    (tmp_path / ".tmp-step-3").mkdir()
    (tmp_path / ".tmp-step-3" / "value.txt").write_text("half")
    again = CheckpointManager(tmp_path, keep_last=1)
    assert again.latest() == tmp_path / "step-3"
    assert (again.latest() / "value.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]


def test_a_prune_cut_short_never_lists_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, lambda d: (d / "a.txt").write_text("1"))

    def killed_mid_delete(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()  # one file gone, then the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, lambda d: (d / "a.txt").write_text("2"))
    monkeypatch.undo()
    assert [step for step, _ in CheckpointManager(tmp_path, keep_last=1).list()] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]


def test_a_crash_while_writing_the_final_model_leaves_no_half_model_folder(tmp_path):
    """model/ is written beside it and renamed into place: a crash half way leaves the
    previous model/ (or none), never a config.json without its weights, which `--model
    runs/x` would take for a model."""
    import torch

    from alignkit.train.checkpoint import default_save_model
    from alignkit.train.engine import Engine
    from alignkit.train.train_config import TrainConfig

    def crash_after_the_config(model, directory):
        directory.mkdir(parents=True)
        (directory / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the kill came before the weights

    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), report_to_tensorboard=False)
    engine = Engine(cfg, model, save_model=crash_after_the_config)
    with pytest.raises(KeyboardInterrupt):
        engine.save_model(tmp_path / "run" / "model")
    assert not (tmp_path / "run" / "model").exists()
    engine._save_model = default_save_model
    engine.save_model(tmp_path / "run" / "model")
    engine._save_model = crash_after_the_config
    with pytest.raises(KeyboardInterrupt):
        engine.save_model(tmp_path / "run" / "model")
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == ["model.safetensors"]
    engine.close()
