"""Reading run folders for the dashboard, and nothing outside the folder it was given.

A run folder holds ``config.yaml`` (or ``config.json``), ``metrics.jsonl``, ``events.jsonl``,
``checkpoints/step-N/``, ``model/`` and, for PPO and GRPO, ``rollouts.jsonl`` (README, "Run
folders"). A pipeline folder holds one folder per stage with a run folder inside, plus
``pipeline.json``, ``summary.json`` and ``report.html`` (alignkit/pipeline/).

Every path a request names is relative to the runs root and is refused (`OutsideRuns`)
unless, with every symlink resolved, it still lies inside the root; no file that is a
symlink is read at all (a link inside a run folder could point anywhere), and no link is
followed when a folder is walked or sized.

A run folder may be damaged (a line that is not JSON, bad YAML, a file that is not UTF-8)
or still being written (a half line at the end of a file). What can be read is served;
what cannot is reported as the folder's ``problems``, one line each, and never takes the
listing or another run down.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
CONFIG_FILES = ("config.yaml", "config.json")
PIPELINE_MARKERS = ("pipeline.json", "summary.json")
NAME_MAX = 255  # bytes in one path component (Linux, macOS)
MAX_PROBLEMS = 5  # a damaged file's first problems are named, the rest counted
MAX_DEPTH = 4  # runs/pipeline/stage/run is three levels down; one more for a nested folder
RUNNING_WINDOW_S = 120  # a run whose metrics changed this recently and that has not ended


class OutsideRuns(ValueError):
    """A path that is not a run folder inside the runs root."""


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` with symlinks resolved, or OutsideRuns if it leaves ``root``.

    Refused: absolute paths, any ``..`` component, NUL bytes, a component longer than the
    file system allows, a symlink loop, and a path whose resolved target (through a symlink
    anywhere on the way) is not inside the resolved root."""
    if "\x00" in relative or "\\" in relative:
        raise OutsideRuns(f"not a run path: {relative!r}")
    parts = Path(relative).parts
    if Path(relative).is_absolute() or relative.startswith("/") or ".." in parts:
        raise OutsideRuns(f"not a run path: {relative!r}")
    if any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in parts):
        raise OutsideRuns(f"not a run path: {relative[:80]!r}…")
    base = root.resolve()
    try:
        target = (base / relative).resolve()
        target.stat()  # a loop that resolve() left unresolved shows here
    except FileNotFoundError:
        pass  # a path that does not exist is refused below by whoever needs it to
    except (RuntimeError, OSError) as error:  # RuntimeError: a symlink loop (Python 3.11)
        raise OutsideRuns(f"not a run path: {relative!r} ({error.__class__.__name__})") from None
    if target != base and not target.is_relative_to(base):
        raise OutsideRuns(f"not a run path: {relative!r}")
    return target


def _readable(path: Path) -> Path | None:
    """``path`` if it is a file that is not a symlink (a link could point out of the
    root: the dashboard reads no link at all), else None."""
    return path if path.is_file() and not path.is_symlink() else None


def _is_run(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file() or any((folder / c).is_file() for c in CONFIG_FILES)


def _is_pipeline(folder: Path) -> bool:
    return any((folder / m).is_file() for m in PIPELINE_MARKERS)


@dataclass
class Lines:
    """What a JSON-lines file held from one line on: the readable records, the line to read
    from next time, and one message per line that could not be read."""

    records: list[dict[str, Any]]
    next: int
    problems: list[str]


def _whole_step(record: dict[str, Any]) -> str | None:
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step is {step!r}, not a whole number"
    return None


def _named_event(record: dict[str, Any]) -> str | None:
    return None if isinstance(record.get("event"), str) else "no event name"


CHECKS = {METRICS_FILE: _whole_step, EVENTS_FILE: _named_event}


def read_lines(path: Path, start: int = 0) -> Lines:
    """The records of a JSON-lines file from line ``start`` on (0-based). A line that is not
    UTF-8, not JSON, not an object, or fails its file's check (``CHECKS``: a metrics record's
    step is a whole number, an event has a name) is skipped and named in ``problems``. A
    half-written last line (a run writing right now) is neither read nor a problem: ``next``
    stops before it, so the next read starts there."""
    lines = Lines([], start, [])
    if _readable(path) is None:
        return lines
    check = CHECKS.get(path.name)
    with path.open("rb") as f:
        for number, raw in enumerate(f):
            if number < start:
                continue
            if not raw.endswith(b"\n"):
                break
            lines.next = number + 1
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.problems.append(f"{path.name} line {number + 1}: not UTF-8 text")
                continue
            except ValueError:
                lines.problems.append(f"{path.name} line {number + 1}: not JSON")
                continue
            reason = "not a JSON object" if not isinstance(record, dict) else None
            if reason is None and check is not None:
                reason = check(record)
            if reason is not None:
                lines.problems.append(f"{path.name} line {number + 1}: {reason}")
                continue
            lines.records.append(record)
    return lines


def read_jsonl(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """The readable records of a JSON-lines file from line ``start`` on (see `read_lines`)."""
    return read_lines(path, start).records


def summarised(problems: list[str]) -> list[str]:
    """The first MAX_PROBLEMS problems, and how many more there were."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more"]


def read_config(folder: Path, problems: list[str] | None = None) -> dict[str, Any]:
    """The run's config as a mapping; {} (and a problem) when it cannot be read as one."""
    problems = [] if problems is None else problems
    for name in CONFIG_FILES:
        path = _readable(folder / name)
        if path is None:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
        except UnicodeDecodeError:
            problems.append(f"{name}: not UTF-8 text")
            return {}
        except (yaml.YAMLError, ValueError) as error:
            problems.append(
                f"{name}: not valid {'YAML' if name.endswith('.yaml') else 'JSON'}"
                f" ({str(error).splitlines()[0]})"
            )
            return {}
        if not isinstance(data, dict):
            problems.append(f"{name}: not a mapping of option names to values")
            return {}
        return data
    return {}


def read_json_file(path: Path, problems: list[str]) -> Any:
    """A JSON file's value, or None (and a problem) when it is missing, a link or damaged."""
    if _readable(path) is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        problems.append(f"{path.name}: not valid JSON")
        return None


def run_kind(folder: Path, config: dict[str, Any]) -> str:
    """What trained here, from the files and the config's own keys."""
    if (folder / ROLLOUTS_FILE).is_file() or "num_generations" in config:
        return "grpo" if "num_generations" in config else "ppo"
    if "ppo_epochs" in config:
        return "ppo"
    if "loss_type" in config and "beta" in config:
        return "dpo"
    if "center_rewards_coefficient" in config or (folder / "model" / "scalar_head.json").is_file():
        return "rm"
    if "packing" in config:
        return "sft"
    return "run"


def run_status(folder: Path, events: list[dict[str, Any]] | None = None) -> str:
    """finished, stopped, running, or idle (no end event, nothing written lately)."""
    events = read_jsonl(folder / EVENTS_FILE) if events is None else events
    ends = [e["event"] for e in events if e["event"] in ("finished", "stop")]
    if ends:
        return "finished" if ends[-1] == "finished" else "stopped"
    metrics = folder / METRICS_FILE
    if metrics.is_file() and time.time() - metrics.stat().st_mtime < RUNNING_WINDOW_S:
        return "running"
    return "idle"


@dataclass
class RunEntry:
    id: str  # path relative to the runs root, with /
    kind: str
    status: str
    steps: int
    modified: float
    pipeline: str | None  # the pipeline folder this run belongs to, if any
    problems: list[str]  # what in the folder could not be read, one line each

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    base = root.resolve()
    runs, pipelines = [], []
    if not base.is_dir():
        return runs, pipelines
    for current, dirs, _files in os.walk(base, followlinks=False):
        folder = Path(current)
        depth = len(folder.relative_to(base).parts)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in ("checkpoints", "model")
        )
        if depth >= MAX_DEPTH:
            dirs[:] = []
        if folder != base and _is_pipeline(folder):
            pipelines.append(folder)
        if folder != base and _is_run(folder):
            runs.append(folder)
            dirs[:] = [d for d in dirs if d != "tensorboard"]
    return runs, pipelines


def _entry(base: Path, folder: Path, pipeline_ids: list[str]) -> RunEntry:
    rel = folder.relative_to(base).as_posix()
    problems: list[str] = []
    config = read_config(folder, problems)
    metrics_path = folder / METRICS_FILE
    metrics, events = read_lines(metrics_path), read_lines(folder / EVENTS_FILE)
    problems += metrics.problems + events.problems
    return RunEntry(
        id=rel,
        kind=run_kind(folder, config),
        status=run_status(folder, events.records),
        steps=max((r["step"] for r in metrics.records), default=0),
        modified=(metrics_path if metrics_path.is_file() else folder).stat().st_mtime,
        pipeline=next((p for p in pipeline_ids if rel.startswith(p + "/")), None),
        problems=summarised(problems),
    )


def list_runs(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every run and pipeline folder under ``root`` (not following symlinks); a damaged
    folder is listed with its problems."""
    base = root.resolve()
    runs, pipelines = _walk(root)
    pipeline_ids = [p.relative_to(base).as_posix() for p in pipelines]
    entries = [_entry(base, folder, pipeline_ids).to_dict() for folder in runs]
    return {
        "runs": sorted(entries, key=lambda e: e["id"]),
        "pipelines": [
            {"id": pid, "has_report": (base / pid / "report.html").is_file()}
            for pid in sorted(pipeline_ids)
        ],
    }


def run_folder(root: Path, run_id: str) -> Path:
    folder = inside(root, run_id)
    if not folder.is_dir() or not _is_run(folder):
        raise OutsideRuns(f"no run folder {run_id!r}")
    return folder


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def tree_bytes(folder: Path) -> int:
    """The bytes of the regular files under ``folder``, following no link (a link in a
    checkpoint could point at /usr)."""
    total = 0
    for current, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            info = os.lstat(os.path.join(current, name))
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def checkpoints(folder: Path) -> list[dict[str, Any]]:
    """The run's ``checkpoints/step-N`` folders with their sizes; links are not followed
    (a checkpoint, or the checkpoints folder, that is a link is not listed)."""
    parent = folder / "checkpoints"
    if not _real_dir(parent):
        return []
    found = []
    for path in parent.iterdir():
        if not path.name.startswith("step-") or not path.name[5:].isdigit():
            continue
        if not _real_dir(path):
            continue
        found.append(
            {
                "name": path.name,
                "step": int(path.name[5:]),
                "bytes": tree_bytes(path),
                "modified": path.stat().st_mtime,
            }
        )
    return sorted(found, key=lambda c: c["step"])


def run_details(root: Path, run_id: str) -> dict[str, Any]:
    """Config, status, events, checkpoints, what else the folder holds, and what in it
    could not be read."""
    folder = run_folder(root, run_id)
    problems: list[str] = []
    config = read_config(folder, problems)
    events = read_lines(folder / EVENTS_FILE)
    problems += events.problems
    return {
        "id": run_id,
        "kind": run_kind(folder, config),
        "status": run_status(folder, events.records),
        "config": config,
        "events": events.records,
        "checkpoints": checkpoints(folder),
        "has_model": (folder / "model" / "config.json").is_file(),
        "has_rollouts": (folder / ROLLOUTS_FILE).is_file(),
        "problems": summarised(problems),
    }


def metrics_since(root: Path, run_id: str, start: int = 0) -> dict[str, Any]:
    """The metrics records from line ``start`` on, and the line to ask from next time."""
    folder = run_folder(root, run_id)
    lines = read_lines(folder / METRICS_FILE, start)
    return {
        "records": lines.records,
        "next": lines.next,
        "status": run_status(folder),
        "problems": summarised(lines.problems),
    }


def pipeline_summary(root: Path, pipeline_id: str) -> dict[str, Any]:
    folder = inside(root, pipeline_id)
    if not folder.is_dir() or not _is_pipeline(folder):
        raise OutsideRuns(f"no pipeline folder {pipeline_id!r}")
    problems: list[str] = []
    summary = read_json_file(folder / "summary.json", problems)
    if summary is not None and not isinstance(summary, dict):
        problems.append("summary.json: not a JSON object")
        summary = None
    return {
        "id": pipeline_id,
        "summary": summary,
        "has_report": (folder / "report.html").is_file(),
        "stages": sorted(
            p.name for p in folder.iterdir() if _real_dir(p) and (p / "done.json").is_file()
        ),
        "problems": problems,
    }


def report_path(root: Path, pipeline_id: str) -> Path:
    folder = inside(root, pipeline_id)
    path = _readable(folder / "report.html")
    if not _is_pipeline(folder) or path is None:
        raise OutsideRuns(f"no report in {pipeline_id!r}")
    return path
