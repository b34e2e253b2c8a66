"""``RunDirectory``: the files of one run — config.yaml, metrics.jsonl, events.jsonl, TensorBoard.

Only the main process writes: build it with ``is_main=False`` on the others and every method
is a no-op there, so callers need no ``if is_main`` of their own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from alignkit.options import save_config

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
TENSORBOARD_DIR = "tensorboard"

# the command each trainer's config belongs to (config.yaml's first line names it)
TRAINER_COMMANDS = {
    "SFTConfig": "sft",
    "RewardConfig": "rm",
    "DPOConfig": "dpo",
    "PPOConfig": "ppo",
    "GRPOConfig": "grpo",
}
_TRAINER_LINE = re.compile(r"# alignkit ([^\s:]+)")


# the errors that mean "this folder cannot be written", not a bug: one line, exit 2
UNWRITABLE = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class OutputFolderError(UserError):
    """The run folder cannot be written: disk full, read-only, or no permission."""


@contextlib.contextmanager
def writing_to(folder: str | Path, *, then: str = "") -> Iterator[None]:
    """Turn a write that fails because ``folder`` cannot be written (:data:`UNWRITABLE`)
    into one :class:`OutputFolderError` line naming the folder, followed by ``then`` (what
    is still safe); any other OSError is left as it is."""
    try:
        yield
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise OutputFolderError(
            f"cannot write to the run folder {folder}: {UNWRITABLE[err.errno]}{where}{then}"
        ) from err


def trainer_name(config: Any) -> str:
    """The command that trains with ``config`` (``dpo``), or its class name if none does."""
    return TRAINER_COMMANDS.get(type(config).__name__, type(config).__name__)


def _clean(value: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to Python numbers, NaN/Inf to None."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file ([] if it does not exist).

    A last line with no newline that does not parse was cut by a crash (kill -9, disk full)
    while it was written: it is dropped. Any other bad line raises."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = [json.loads(line) for line in lines[:-1] if line.strip()]
    torn = lines[-1]
    if torn.strip():
        with contextlib.suppress(json.JSONDecodeError):  # else the torn tail of a crash
            records.append(json.loads(torn))
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a crash cut it short while it was written), so
    that the next record starts a line of its own and the file stays readable."""
    if not path.exists():
        return
    with path.open("r+b") as f:
        size = f.seek(0, 2)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)  # once per run: the whole file is fine


class RunDirectory:
    """One run's output folder.

    - ``write_config(cfg)``: ``config.yaml`` (the resolved dataclass), whose first line, a
      comment, names the trainer (``# alignkit dpo``); ``trainer()`` reads it back.
    - ``log_metrics(step, metrics, epoch=, lr=)``: one line of ``metrics.jsonl``
      ``{"step", "epoch", **metrics, "lr", "time"}`` and TensorBoard scalars under
      ``<prefix>/<name>`` (a metric named ``eval_loss`` goes to ``eval/loss``, others ``train/``).
    - ``log_event(kind, step, message, **fields)``: one line of ``events.jsonl``.
    - ``time`` is seconds since the run began, continued across resumes (``time_offset``).
    """

    def __init__(self, path: str | Path, *, is_main: bool = True, tensorboard: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.time_offset = 0.0
        self._start = time.monotonic()
        self._tb = None
        self._tails_checked: set[Path] = set()
        if is_main:
            with writing_to(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.path / TENSORBOARD_DIR))
                except Exception as e:  # tensorboard missing or broken: keep going without it
                    self.log_event("warning", 0, f"TensorBoard disabled: {e}")

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    def elapsed(self) -> float:
        """Seconds since the run began (including earlier, resumed-from segments)."""
        return self.time_offset + time.monotonic() - self._start

    def write_config(self, config: Any) -> None:
        if self.is_main:
            header = f"alignkit {trainer_name(config)}: the resolved options of this run"
            with writing_to(self.path):
                save_config(config, self.path / CONFIG_FILE, header=header)

    def trainer(self) -> str | None:
        """The trainer that wrote this folder's config.yaml (None: no file, or written
        before config.yaml named its trainer)."""
        try:
            with (self.path / CONFIG_FILE).open(encoding="utf-8") as f:
                first = f.readline()
        except FileNotFoundError:
            return None
        match = _TRAINER_LINE.match(first)
        return match.group(1) if match else None

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        with writing_to(self.path):
            if path not in self._tails_checked:
                self._tails_checked.add(path)
                _drop_torn_tail(path)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def log_metrics(
        self,
        step: int,
        metrics: dict[str, Any],
        *,
        epoch: float | None = None,
        lr: float | None = None,
    ) -> dict[str, Any]:
        """Append one metrics record and mirror it to TensorBoard; returns the record."""
        record: dict[str, Any] = {"step": int(step)}
        if epoch is not None:
            record["epoch"] = round(float(epoch), 6)
        record.update({k: _clean(v) for k, v in metrics.items()})
        if lr is not None:
            record["lr"] = _clean(lr)
        record["time"] = round(self.elapsed(), 3)
        if not self.is_main:
            return record
        self._append(self.metrics_path, record)
        if self._tb is not None:
            for key, value in record.items():
                if key in ("step", "time") or not isinstance(value, int | float):
                    continue
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self._tb.add_scalar(tag, value, int(step))
            self._tb.flush()
        return record

    def log_event(self, kind: str, step: int, message: str = "", **fields: Any) -> None:
        """Append a notable event (``nonfinite_skip``, ``stop``, ``resume``, ``checkpoint``...)."""
        if not self.is_main:
            return
        record = {
            "step": int(step),
            "event": kind,
            "message": message,
            "time": round(self.elapsed(), 3),
        }
        record.update({k: _clean(v) for k, v in fields.items()})
        self._append(self.events_path, record)

    def truncate_metrics_after(self, step: int) -> None:
        """Drop metrics records past ``step`` (logged after the checkpoint a resume starts from)."""
        if not self.is_main or not self.metrics_path.exists():
            return
        kept = [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with writing_to(self.path):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.metrics_path)

    def has_run(self) -> bool:
        """Whether the folder already holds a run's metrics or checkpoints."""
        return self.metrics_path.exists() or any((self.path / "checkpoints").glob("step-*"))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
