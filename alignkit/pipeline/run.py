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
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from alignkit.errors import UserError
from alignkit.options import load_config

C = TypeVar("C")

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
    demonstrations: float = 1.0  # share of train prompts with a demonstration for SFT
    max_new_tokens: int = 48
    # the feedback's answers are only labelled, never scored as a policy's own: bfloat16
    # decoding (faster on AVX-512 BF16 CPUs) changes nothing the labels depend on
    feedback_dtype: str = "bfloat16"
    # the candidates are sampled a little cooler than the policy's own temperature 1, so
    # the comparisons are between answers near what the model would say, not noise
    feedback_temperature: float = 0.7
    overlap: int = 3  # annotators per pair
    drop_flagged: bool = True  # the label rule: drop flagged annotators, then majority
    # stage -> that trainer's options (as `alignkit sft --help` lists them), over the
    # stage's own defaults; checked like the command line's
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_steps: int | None = None  # cap every trainer at this many steps (tests)
    batch_size: int = 4
    seed: int = 0
    keep_checkpoints: bool = False  # keep each finished stage's resumable checkpoints
    stages: tuple[str, ...] = STAGES


# LoRA on every linear map of the top 12 of SmolLM2's 30 layers: the backward pass stops
# there, and each policy's adapter is a few MB (π_ref is the SFT model, adapter off)
LORA = {
    "use_lora": True,
    "lora_r": 16,
    "lora_alpha": 32.0,
    "lora_dropout": 0.0,
    "lora_top_layers": 12,
    "lora_target_modules": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
}

OFFLINE = {"batch_size": 8, "gradient_accumulation_steps": 1}  # 8 examples (pairs) a step

# rollouts decoded in bfloat16 (faster here; the updates' log-probs stay float32)
ONLINE = {"sampling_dtype": "bfloat16", **LORA}

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "arithmetic": 8,
        "held_out": 0.3,
        "samples_per_prompt": 4,
        "heldout_samples": 3,
        "max_new_tokens": 64,
        "stage_options": {
            "sft": {"num_epochs": 2, "learning_rate": 4e-4, **OFFLINE, **LORA},
            "rm": {
                "num_epochs": 2,
                "frozen_layers": 24,
                "learning_rate": 2e-4,
                **OFFLINE,
                "batch_size": 4,
            },
            "dpo": {"num_epochs": 2, "learning_rate": 5e-4, "beta": 0.1, **OFFLINE, **LORA},
            "ppo": {
                "time_budget": "45s",
                "batch_size": 8,
                "learning_rate": 5e-4,
                "critic_frozen_layers": 24,
                **ONLINE,
            },
            "grpo": {"time_budget": "90s", "batch_size": 4, "learning_rate": 1e-3, **ONLINE},
            "hack": {"time_budget": "50s", "batch_size": 4, "learning_rate": 3e-3, **ONLINE},
        },
    },
    "full": {
        "arithmetic": 20,
        "held_out": 0.4,
        "samples_per_prompt": 6,
        "heldout_samples": 3,
        "max_new_tokens": 64,
        "stage_options": {
            "sft": {"num_epochs": 3, "learning_rate": 4e-4, **OFFLINE, **LORA},
            "rm": {
                "num_epochs": 3,
                "frozen_layers": 22,
                "learning_rate": 2e-4,
                **OFFLINE,
                "batch_size": 4,
            },
            "dpo": {"num_epochs": 2, "learning_rate": 5e-4, "beta": 0.1, **OFFLINE, **LORA},
            "ppo": {
                "time_budget": "4m",
                "batch_size": 8,
                "learning_rate": 5e-4,
                "critic_frozen_layers": 22,
                **ONLINE,
            },
            "grpo": {"time_budget": "4m", "batch_size": 4, "learning_rate": 1e-3, **ONLINE},
            "hack": {"time_budget": "2m", "batch_size": 4, "learning_rate": 3e-3, **ONLINE},
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
        self.root = Path(
            cfg.output_dir or f"runs/pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
        ).absolute()
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

    def finish_trainer(self, stage: str) -> None:
        """What a finished trainer's folder keeps: its metrics, events, rollouts and final
        model; a LoRA policy's model as its adapter alone (a few MB, over the model it
        was trained from: `alignkit eval` and `--model` load it as the merged model), and
        the resumable checkpoints only with `keep_checkpoints`."""
        if self.cfg.keep_checkpoints:
            return
        run = self.folder(stage) / "run"
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        keep_adapter_only(run / "model")

    def trainer_config(self, config_class: type[C], stage: str, **wiring: Any) -> C:
        """The trainer's config for `stage`: the pipeline's wiring (this stage's folder,
        seed, data), `wiring` (the stage's defaults), then the preset's options for the
        stage, checked as the command line's are: a wrong key or value is one error line
        naming the stage."""
        cfg = self.cfg
        values: dict[str, Any] = {
            "output_dir": str(self.folder(stage) / "run"),
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "report_to_tensorboard": False,
            "save_every": 0,
            "eval_every": 0,
            "resume": True,  # a stage cut short continues from its last checkpoint
        }
        values.update(wiring)
        values.update(cfg.stage_options.get(stage, {}))
        if cfg.stage_steps is not None:
            values["max_steps"] = cfg.stage_steps
            values.pop("time_budget", None)
        return load_config(config_class, overrides=values, source=f"pipeline stage {stage}")


def keep_adapter_only(model_dir: Path) -> None:
    """Turn a LoRA export (merged weights, the adapter in ``adapter/``) into an adapter
    folder: the adapter's files and the tokenizer's, its base named relative to it."""
    adapter = model_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (model_dir / name).unlink(missing_ok=True)
    for weights in model_dir.glob("model-*.safetensors"):
        weights.unlink()
    for path in adapter.iterdir():
        path.replace(model_dir / path.name)
    adapter.rmdir()
    config_path = model_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = Path(config.get("base_model_name_or_path") or "")
    if base.is_absolute() and base.exists():
        config["base_model_name_or_path"] = os.path.relpath(base, model_dir)
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def config_for(preset: str | None, **overrides: Any) -> PipelineConfig:
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset or "quick", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(PipelineConfig(), **values)
