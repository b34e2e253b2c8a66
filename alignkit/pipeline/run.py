"""`alignkit pipeline`: the seeds' story in one command, stage by stage, each in its own
folder under one pipeline folder. A finished stage leaves `done.json` and is skipped on a
rerun, so a pipeline that stopped half-way continues where it was.

1. task      the demo task's prompts, split into train and held-out (`pipeline.task`)
2. feedback  the base policy answers each prompt several times; simulated annotators
             label every pair of a prompt's answers (`feedback.simulated`); agreement and
             flags; the consensus pairs, and each prompt's best-against-worst pair
3. sft       SFT on demonstrations: the gold judge's best answer of each prompt's samples
4. rm        a Bradley–Terry reward model on the consensus pairs; accuracy on held-out
             pairs against the gold judge's preference
5. dpo, ppo, grpo   each from the SFT policy, KL to it, shaping and the guard on; DPO on
             the best-against-worst pairs, PPO and GRPO against the reward model
6. hack      GRPO against a flawed proxy: the reward model plus a term that pays for
             length, a small β, the guard watching gold against proxy
7. eval      every policy against the SFT policy and the base model (`eval.compare`)
8. report    summary.json and report.html (`pipeline.report`)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from alignkit.errors import UserError

STAGES = ("task", "feedback", "sft", "rm", "dpo", "ppo", "grpo", "hack", "eval", "report")
DONE = "done.json"


@dataclass
class PipelineConfig:
    """The pipeline's knobs; a preset fills them (`quick`, `full`)."""

    model: str = "smollm2-135m-instruct"
    output_dir: str | None = None  # default runs/pipeline-<time>
    arithmetic: int = 20  # sums and differences in the task (the rest is fixed)
    held_out: float = 0.25
    samples_per_prompt: int = 4  # answers sampled per train prompt by the base policy
    heldout_samples: int = 3  # per held-out prompt: the reward model's check pairs
    max_new_tokens: int = 48
    overlap: int = 3  # annotators per pair
    drop_flagged: bool = True  # the label rule: drop flagged annotators, then majority
    stage_budget: dict[str, str] = field(default_factory=dict)  # stage -> --time-budget
    stage_steps: int | None = None  # cap every trainer at this many steps (tests)
    batch_size: int = 4
    seed: int = 0
    stages: tuple[str, ...] = STAGES


PRESETS: dict[str, dict[str, Any]] = {
    # about 14 minutes on 2 CPU cores: sampling the feedback ~3, the trainers ~7, eval ~4.5
    "quick": {
        "arithmetic": 8,
        "held_out": 0.3,
        "samples_per_prompt": 4,
        "heldout_samples": 2,
        "max_new_tokens": 64,
        "stage_budget": {
            "sft": "40s",
            "rm": "70s",
            "dpo": "100s",
            "ppo": "80s",
            "grpo": "50s",
            "hack": "60s",
        },
    },
    # about 40 minutes: the whole task, 6 answers per prompt (15 pairs), longer stages
    "full": {
        "arithmetic": 20,
        "held_out": 0.4,
        "samples_per_prompt": 6,
        "heldout_samples": 3,
        "max_new_tokens": 64,
        "stage_budget": {
            "sft": "3m",
            "rm": "5m",
            "dpo": "6m",
            "ppo": "6m",
            "grpo": "6m",
            "hack": "4m",
        },
    },
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Pipeline:
    """Runs the stages in order into `root`; `run()` returns the summary."""

    def __init__(self, cfg: PipelineConfig, console: Console | None = None):
        self.cfg = cfg
        self.root = Path(cfg.output_dir or f"runs/pipeline-{time.strftime('%Y%m%d-%H%M%S')}")
        self.console = console or Console()
        unknown = [s for s in cfg.stages if s not in STAGES]
        if unknown:
            raise UserError(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")

    def folder(self, stage: str) -> Path:
        return self.root / stage

    def done(self, stage: str) -> dict[str, Any] | None:
        marker = self.folder(stage) / DONE
        return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None

    def run(self) -> dict[str, Any]:
        from alignkit.pipeline import stages

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pipeline.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        steps: dict[str, Callable[[Pipeline], dict[str, Any]]] = {
            name: getattr(stages, f"stage_{name}") for name in STAGES
        }
        results: dict[str, Any] = {}
        for name in self.cfg.stages:
            finished = self.done(name)
            if finished is not None:
                self.console.print(f"[dim]{name}: done before, skipped[/dim]")
                results[name] = finished
                continue
            self.console.rule(f"[bold]{name}")
            start = time.monotonic()
            self.folder(name).mkdir(parents=True, exist_ok=True)
            result = steps[name](self) | {"seconds": round(time.monotonic() - start, 1)}
            (self.folder(name) / DONE).write_text(json.dumps(result, indent=1), encoding="utf-8")
            results[name] = result
        return results

    # ---- helpers the stages share

    def trainer_options(self, stage: str) -> dict[str, Any]:
        """What every trainer of the pipeline gets: the stage's folder, budget, cap."""
        cfg = self.cfg
        options: dict[str, Any] = {
            "output_dir": str(self.folder(stage) / "run"),
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "report_to_tensorboard": False,
            "save_every": 0,
            "eval_every": 0,
            "resume": True,  # a stage cut short continues from its last checkpoint
        }
        if stage in cfg.stage_budget:
            options["time_budget"] = cfg.stage_budget[stage]
        if cfg.stage_steps is not None:
            options["max_steps"] = cfg.stage_steps
        elif stage not in cfg.stage_budget:
            options["max_steps"] = 20
        return options


def config_for(preset: str | None, **overrides: Any) -> PipelineConfig:
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset or "quick", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(PipelineConfig(), **values)
