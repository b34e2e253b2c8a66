"""Reading run folders for the dashboard, and nothing outside the folder it was given.

A run folder holds ``config.yaml`` (or ``config.json``), ``metrics.jsonl``, ``events.jsonl``,
``checkpoints/step-N/``, ``model/`` and, for PPO and GRPO, ``rollouts.jsonl`` (README, "Run
folders"). A pipeline folder holds one folder per stage with a run folder inside, plus
``pipeline.json``, ``summary.json`` and ``report.html`` (alignkit/pipeline/).

Every path a request names is relative to the runs root and is refused (`OutsideRuns`)
unless, with every symlink resolved, it still lies inside the root; and no file that is a
symlink is read at all (a link inside a run folder could point anywhere).
"""

from __future__ import annotations

import json
import os
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
MAX_DEPTH = 4  # runs/pipeline/stage/run is three levels down; one more for a nested folder
RUNNING_WINDOW_S = 120  # a run whose metrics changed this recently and that has not ended


class OutsideRuns(ValueError):
    """A path that is not a run folder inside the runs root."""


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` with symlinks resolved, or OutsideRuns if it leaves ``root``.

    Refused: absolute paths, any ``..`` component, NUL bytes, and a path whose resolved
    target (through a symlink anywhere on the way) is not inside the resolved root."""
    if "\x00" in relative or "\\" in relative:
        raise OutsideRuns(f"not a run path: {relative!r}")
    parts = Path(relative).parts
    if Path(relative).is_absolute() or relative.startswith("/") or ".." in parts:
        raise OutsideRuns(f"not a run path: {relative!r}")
    base = root.resolve()
    target = (base / relative).resolve()
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


def read_jsonl(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """Records of a JSON-lines file from line ``start`` on; a half-written last line (a
    run writing right now) is left for the next read."""
    if _readable(path) is None:
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f):
            if number < start or not line.strip():
                continue
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


def read_config(folder: Path) -> dict[str, Any]:
    for name in CONFIG_FILES:
        path = _readable(folder / name)
        if path is not None:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
            return data if isinstance(data, dict) else {}
    return {}


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


def run_status(folder: Path) -> str:
    """finished, stopped, running, or idle (no end event, nothing written lately)."""
    events = read_jsonl(folder / EVENTS_FILE)
    ends = [e.get("event") for e in events if e.get("event") in ("finished", "stop")]
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


def list_runs(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every run and pipeline folder under ``root`` (not following symlinks)."""
    base = root.resolve()
    runs, pipelines = _walk(root)
    pipeline_ids = [p.relative_to(base).as_posix() for p in pipelines]
    entries = []
    for folder in runs:
        rel = folder.relative_to(base).as_posix()
        owner = next((p for p in pipeline_ids if rel.startswith(p + "/")), None)
        metrics = folder / METRICS_FILE
        entries.append(
            RunEntry(
                id=rel,
                kind=run_kind(folder, read_config(folder)),
                status=run_status(folder),
                steps=_last_step(metrics),
                modified=metrics.stat().st_mtime if metrics.is_file() else folder.stat().st_mtime,
                pipeline=owner,
            ).to_dict()
        )
    return {
        "runs": sorted(entries, key=lambda e: e["id"]),
        "pipelines": [
            {"id": pid, "has_report": (base / pid / "report.html").is_file()}
            for pid in sorted(pipeline_ids)
        ],
    }


def _last_step(metrics: Path) -> int:
    steps = [r.get("step", 0) for r in read_jsonl(metrics)]
    return max(steps, default=0)


def run_folder(root: Path, run_id: str) -> Path:
    folder = inside(root, run_id)
    if not folder.is_dir() or not _is_run(folder):
        raise OutsideRuns(f"no run folder {run_id!r}")
    return folder


def checkpoints(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((folder / "checkpoints").glob("step-*")):
        if not path.is_dir() or not path.name[5:].isdigit():
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if _readable(f))
        found.append(
            {
                "name": path.name,
                "step": int(path.name[5:]),
                "bytes": size,
                "modified": path.stat().st_mtime,
            }
        )
    return sorted(found, key=lambda c: c["step"])


def run_details(root: Path, run_id: str) -> dict[str, Any]:
    """Config, status, events, checkpoints and what else the folder holds."""
    folder = run_folder(root, run_id)
    config = read_config(folder)
    return {
        "id": run_id,
        "kind": run_kind(folder, config),
        "status": run_status(folder),
        "config": config,
        "events": read_jsonl(folder / EVENTS_FILE),
        "checkpoints": checkpoints(folder),
        "has_model": (folder / "model" / "config.json").is_file(),
        "has_rollouts": (folder / ROLLOUTS_FILE).is_file(),
    }


def metrics_since(root: Path, run_id: str, start: int = 0) -> dict[str, Any]:
    """The metrics records from line ``start`` on, and the line to ask from next time."""
    folder = run_folder(root, run_id)
    records = read_jsonl(folder / METRICS_FILE, start)
    return {"records": records, "next": start + len(records), "status": run_status(folder)}


def pipeline_summary(root: Path, pipeline_id: str) -> dict[str, Any]:
    folder = inside(root, pipeline_id)
    if not folder.is_dir() or not _is_pipeline(folder):
        raise OutsideRuns(f"no pipeline folder {pipeline_id!r}")
    summary_path = _readable(folder / "summary.json")
    return {
        "id": pipeline_id,
        "summary": json.loads(summary_path.read_text(encoding="utf-8")) if summary_path else None,
        "has_report": (folder / "report.html").is_file(),
        "stages": sorted(
            p.name for p in folder.iterdir() if p.is_dir() and (p / "done.json").is_file()
        ),
    }


def report_path(root: Path, pipeline_id: str) -> Path:
    folder = inside(root, pipeline_id)
    path = _readable(folder / "report.html")
    if not _is_pipeline(folder) or path is None:
        raise OutsideRuns(f"no report in {pipeline_id!r}")
    return path
