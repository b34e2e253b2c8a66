"""Checkpoints: atomic folders ``checkpoints/step-N/``, keep-last-K, and safe (de)serialisation.

A checkpoint is written into ``checkpoints/.tmp-step-N`` first, every file and the folder are
fsynced, then the folder is renamed to ``step-N``. A crash mid-write leaves only a ``.tmp-*``
folder, which :meth:`CheckpointManager.latest` ignores and the next manager removes, so the
previous checkpoint stays the latest loadable one. Re-saving a step moves the old folder
aside to ``.tmp-old-step-N`` first; a crash between the two renames leaves it there, and the
next manager renames it back. Pruning renames a folder to ``.tmp-del-step-N`` before deleting
it, so a half-deleted checkpoint is never listed.

Everything pickled goes through ``torch.save`` and comes back with
``torch.load(weights_only=True)``: state is kept to tensors, numbers, strings, lists and dicts
(the RNG states below are converted to such forms).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"
OLD_PREFIX = f"{TMP_PREFIX}old-"  # a complete checkpoint moved aside while its step is re-saved
DELETE_PREFIX = f"{TMP_PREFIX}del-"  # a pruned checkpoint being deleted

PAUSE_AT_ENV = "ALIGNKIT_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "ALIGNKIT_TEST_PAUSE_FILE"


def pause_for_fault_tests(point: str, step: int) -> None:
    """A test hook, inert unless ``$ALIGNKIT_TEST_PAUSE_AT`` is ``<point>:<step>``.

    Then it creates the file ``$ALIGNKIT_TEST_PAUSE_FILE`` and waits while that file exists,
    so that a test can kill or interrupt a run at exactly this moment (the points:
    ``checkpoint``, between a checkpoint's files; ``update``, inside an optimizer update).
    See tests/train/test_faults.py.
    """
    if os.environ.get(PAUSE_AT_ENV) != f"{point}:{step}":
        return
    marker = Path(os.environ[PAUSE_FILE_ENV])
    marker.touch()
    while marker.exists():
        time.sleep(0.02)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` (the counterpart of :func:`load_torch`)."""
    torch.save(obj, str(path))


def load_torch(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_folder_atomically(directory: Path, write_fn: Callable[[Path], None]) -> Path:
    """Write a folder (a run's final ``model/``) so that it is never seen half written:
    ``write_fn`` fills ``.tmp-<name>`` beside it, which is fsynced and renamed into place
    (an older folder of that name is moved aside first, then deleted). A crash leaves the
    old folder, or none, and a ``.tmp-*`` folder the next write replaces."""
    directory = Path(directory)
    tmp = directory.with_name(f"{TMP_PREFIX}{directory.name}")
    old = directory.with_name(f"{OLD_PREFIX}{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_fn(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(directory.parent)
    return directory


class CheckpointManager:
    """Atomic ``step-N`` folders under ``root``; keeps the newest ``keep_last``.

    Single process: ``save(step, write_fn)`` where ``write_fn(tmp_dir)`` writes the contents.
    Several processes: the main process calls ``begin(step)``, every process writes its part
    into that folder (after a barrier), then the main process calls ``commit(tmp, step)``.
    """

    def __init__(self, root: str | Path, keep_last: int = 2, *, is_main: bool = True):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_main = is_main
        if is_main and self.root.exists():
            self._recover()

    def _recover(self) -> None:
        """After a crash: put back a complete checkpoint that was moved aside for a re-save
        and never replaced, then delete every other temporary folder."""
        for moved in self.root.glob(f"{OLD_PREFIX}step-*"):
            original = self.root / moved.name[len(OLD_PREFIX) :]
            if STEP_DIR.match(original.name) and not original.exists():
                os.replace(moved, original)
        for stale in self.root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def list(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, path), oldest first."""
        if not self.root.exists():
            return []
        found = []
        for child in self.root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        found = self.list()
        return found[-1][1] if found else None

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def tmp_path_for(self, step: int) -> Path:
        return self.root / f"{TMP_PREFIX}step-{step}"

    def begin(self, step: int) -> Path:
        """Create (empty) the temporary folder for ``step`` and return it."""
        tmp = self.tmp_path_for(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int) -> Path:
        """fsync ``tmp``, rename it to ``step-N`` (replacing one of the same step), prune."""
        _fsync_tree(tmp)
        final = self.path_for(step)
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside
            old = self.root / f"{OLD_PREFIX}step-{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)
        self.prune()
        return final

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def save(self, step: int, write_fn: Callable[[Path], None]) -> Path:
        """Write a checkpoint atomically; if ``write_fn`` raises, nothing replaces the last one."""
        tmp = self.begin(step)
        try:
            write_fn(tmp)
        except BaseException:
            self.abort(tmp)
            raise
        return self.commit(tmp, step)

    def prune(self) -> None:
        """Delete all but the newest ``keep_last`` checkpoints."""
        found = self.list()
        for _step, path in found[: max(0, len(found) - self.keep_last)]:
            doomed = self.root / f"{DELETE_PREFIX}{path.name}"
            os.replace(path, doomed)  # atomic: a crash mid-delete leaves no partial step-N
            shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, loadable with weights_only=True."""
    version, py_internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------- model weights


def default_save_model(model: torch.nn.Module, directory: Path) -> None:
    """Save weights as safetensors: ``save_pretrained`` if the model has it, else a state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside ours
        try:
            model.save_pretrained(str(directory))
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        return
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))


def default_load_model(model: torch.nn.Module, directory: Path) -> None:
    """Load what :func:`default_save_model` wrote into ``model`` (in place).

    Handles ``save_pretrained`` folders (one or several ``*.safetensors`` files; tied weights
    that were not saved are accepted as missing) and PEFT adapter folders.
    """
    from safetensors.torch import load_file

    adapter = directory / "adapter_model.safetensors"
    if adapter.exists() and hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    own = model.state_dict(keep_vars=True)
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_ptrs]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {directory} does not match the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
