"""One (workload, system) run inside a child process: alignkit's trainers or TRL's, same work.

Both systems get the same model folder, the same data file (a subset of the packaged demo
data), the same data ORDER (TRL reads the rows in alignkit's epoch permutation with a
sequential sampler), the same batch size, lengths, AdamW (torch's, foreach), learning rate
(constant, no warm-up), clipping and number of steps, float32, no evaluation, no saving
during training. What is timed and counted is defined in :mod:`benchmarks.core`.

Timing hooks: alignkit's :class:`~alignkit.train.engine.Engine` is wrapped at class level
(``fit`` to count each batch's tokens, ``backward_and_step`` to mark step ends and record the
loss); TRL gets a ``TrainerCallback`` (``on_step_end``), a counting data collator and a
``compute_loss`` wrapper. Neither hook changes what the trainers compute.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.core import Settings, count_matmul_params, make_record

# Which alignkit data format and whether the LM head is used, per workload.
DATA_FORMAT = {"sft": "sft", "rm": "preference", "dpo": "preference", "grpo": "prompt"}
USES_LM_HEAD = {"sft": True, "rm": False, "dpo": True, "grpo": True}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Probe:
    """What the hooks record during one run."""

    started: float = field(default_factory=time.perf_counter)
    train_begin: float | None = None
    step_ends: list[float] = field(default_factory=list)
    micro_tokens: list[int] = field(default_factory=list)
    micro_losses: list[float] = field(default_factory=list)
    first_metrics: dict[str, float] = field(default_factory=dict)
    rss_at_last_step: float = 0.0
    threads_in_loop: int | None = None

    def step_end(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.rss_at_last_step = peak_rss_mib()

    def per_step(self, values: list[Any], accum: int, reduce: Callable[[list[Any]], Any]) -> list:
        steps = len(self.step_ends)
        return [reduce(values[i * accum : (i + 1) * accum]) for i in range(steps)]

    def record(self, *, workload: str, system: str, settings: Settings, n_params: int, **extra):
        accum = settings.gradient_accumulation_steps
        tokens = self.per_step(self.micro_tokens, accum, sum)
        losses = self.per_step(self.micro_losses, accum, lambda xs: sum(xs) / max(1, len(xs)))
        return make_record(
            workload=workload,
            system=system,
            model=settings.model,
            step_ends=self.step_ends,
            step_tokens=tokens,
            losses=losses,
            peak_rss_mib=self.rss_at_last_step,
            peak_rss_exit_mib=peak_rss_mib(),
            n_params=n_params,
            warmup_steps=settings.warmup_steps,
            setup_s=(self.train_begin or self.started) - self.started,
            threads=self.threads_in_loop,
            first_metrics=self.first_metrics,
            **extra,
        )


def _float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean())
    return float(value)


# ============================================================================= alignkit


def _alignkit_common(settings: Settings, workload: str, data: Path, out: Path) -> dict[str, Any]:
    return dict(
        model=settings.model_path,
        dataset=str(data),
        eval_fraction=0.0,
        output_dir=str(out),
        max_steps=settings.total_steps,
        seed=settings.seed,
        learning_rate=settings.learning_rates[workload],
        lr_scheduler="constant",
        warmup_steps=0,
        warmup_ratio=0.0,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_betas[0],
        adam_beta2=settings.adam_betas[1],
        adam_epsilon=settings.adam_epsilon,
        batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_grad_norm=settings.max_grad_norm,
        eval_every=0,
        save_every=0,
        log_every=10**6,
        report_to_tensorboard=False,
        max_length=settings.max_length,
        max_prompt_length=settings.max_prompt_length,
        dtype="float32",
    )


def _install_alignkit_probe(probe: Probe) -> None:
    from alignkit.train import engine as engine_module

    Engine = engine_module.Engine
    if getattr(Engine, "_bench_probe", False):
        raise RuntimeError("the alignkit probe is already installed in this process")
    original_fit, original_step = Engine.fit, Engine.backward_and_step

    def fit(self, train_dataset, collate_fn, loss_fn, eval_fn=None, **kwargs):
        def counting_collate(features):
            batch = collate_fn(features)
            probe.micro_tokens.append(int(batch["attention_mask"].sum()))
            return batch

        probe.train_begin = time.perf_counter()
        probe.threads_in_loop = torch.get_num_threads()
        return original_fit(self, train_dataset, counting_collate, loss_fn, eval_fn, **kwargs)

    def backward_and_step(self, loss, metrics=None):
        probe.micro_losses.append(_float(loss))
        if metrics and not probe.first_metrics:
            probe.first_metrics = {k: _float(v) for k, v in metrics.items()}
        result = original_step(self, loss, metrics)
        if result.stepped:
            probe.step_end()
        return result

    Engine._bench_originals = (original_fit, original_step)
    Engine.fit, Engine.backward_and_step = fit, backward_and_step
    Engine._bench_probe = True


def uninstall_alignkit_probe() -> None:
    """Restore Engine's own methods (for runs inside a longer-lived process, e.g. tests)."""
    from alignkit.train.engine import Engine

    if getattr(Engine, "_bench_probe", False):
        Engine.fit, Engine.backward_and_step = Engine._bench_originals
        del Engine._bench_originals, Engine._bench_probe


def reward_head_init(hidden: int, seed: int) -> torch.Tensor:
    """The scalar head's initial weight [1, hidden], the same for both systems (alignkit's
    distribution: N(0, 1/(hidden+1))); biases start at 0 (TRL's head has none; with a
    Bradley–Terry loss a bias gets zero gradient, so it stays 0 and changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, hidden, generator=generator) / math.sqrt(hidden + 1)


def run_alignkit(workload: str, settings: Settings, data: Path) -> dict[str, Any]:
    probe = Probe()
    _install_alignkit_probe(probe)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{workload}-alignkit-", dir=data.parent)) / "run"
    common = _alignkit_common(settings, workload, data, out)
    extra: dict[str, Any] = {}
    if workload == "sft":
        from alignkit.train.sft import SFTConfig, SFTTrainer

        trainer = SFTTrainer(SFTConfig(**common, train_on_prompt=False, packing=False))
        model = trainer.model
    elif workload == "rm":
        from alignkit.models.heads import load_scalar_model
        from alignkit.train.reward import RewardConfig, RewardTrainer

        model_rm, tokenizer = load_scalar_model(settings.model_path, seed=settings.seed)
        with torch.no_grad():
            model_rm.head.weight.copy_(reward_head_init(model_rm.config.hidden_size, settings.seed))
            model_rm.head.bias.zero_()
        cfg = RewardConfig(**common, use_margin=True, center_rewards_coefficient=0.0)
        trainer = RewardTrainer(cfg, model_rm, tokenizer)
        model = model_rm.backbone
    elif workload == "dpo":
        from alignkit.train.dpo import DPOConfig, DPOTrainer

        cfg = DPOConfig(
            **common, beta=settings.beta, loss_type="sigmoid", precompute_ref_logps=True
        )
        trainer = DPOTrainer(cfg)
        model = trainer.model
        extra["precompute_ref_logps"] = True
    elif workload == "grpo":
        return run_alignkit_grpo(settings, data, probe)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    n_params = count_matmul_params(model, lm_head=USES_LM_HEAD[workload])
    trainer.train()
    return probe.record(
        workload=workload, system="alignkit", settings=settings, n_params=n_params, **extra
    )


# ============================================================================= TRL


def _trl_common(settings: Settings, workload: str, out: Path) -> dict[str, Any]:
    return dict(
        output_dir=str(out),
        max_steps=settings.total_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rates[workload],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_betas[0],
        adam_beta2=settings.adam_betas[1],
        adam_epsilon=settings.adam_epsilon,
        max_grad_norm=settings.max_grad_norm,
        optim=settings.trl_optim,  # default "adamw_torch": torch.optim.AdamW, as alignkit
        seed=settings.seed,
        data_seed=settings.seed,
        train_sampling_strategy="sequential",  # rows are already in alignkit's order
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast; alignkit runs float32
        fp16=False,
        gradient_checkpointing=False,  # TRL defaults to True; alignkit does not checkpoint
        logging_steps=10**6,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        max_length=settings.max_length,
    )


def _alignkit_order(n: int, seed: int) -> list[int]:
    from alignkit.train.sampler import epoch_permutation

    return epoch_permutation(n, seed, 0)


def _trl_dataset(data: Path, columns: list[str], settings: Settings, cache: Path):
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))
    dataset = dataset.select_columns(columns)
    return dataset.select(_alignkit_order(len(dataset), settings.seed))


def _alignkit_features(workload: str, data: Path, tokenizer, settings: Settings) -> list[dict]:
    """alignkit's tokenization of the same rows, in the same order (to check TRL's tokens)."""
    from alignkit.data import load_dataset_records, tokenize_records

    records = load_dataset_records(str(data), DATA_FORMAT[workload])
    features = tokenize_records(records, tokenizer, settings.max_length, settings.max_prompt_length)
    return [features[i] for i in _alignkit_order(len(features), settings.seed)]


def tokens_match(workload: str, trl_rows: list[dict], alignkit_rows: list[dict]) -> float:
    """Fraction of rows whose token ids (and prompt/response boundary) are the same."""
    same = 0
    for t, a in zip(trl_rows, alignkit_rows, strict=True):
        if workload == "dpo":
            ok = (
                t["prompt_ids"] + t["chosen_ids"] == a["chosen_input_ids"]
                and t["prompt_ids"] + t["rejected_ids"] == a["rejected_input_ids"]
                and len(t["prompt_ids"]) == a["prompt_length"]
            )
        elif workload == "rm":
            ok = (
                t["chosen_ids"] == a["chosen_input_ids"]
                and t["rejected_ids"] == a["rejected_input_ids"]
            )
        elif workload == "sft":
            labelled = [x != -100 for x in a["labels"]]
            ok = t["input_ids"] == a["input_ids"] and [x != -100 for x in t["labels"]] == labelled
        else:
            ok = False
        same += bool(ok)
    return same / max(1, len(trl_rows))


def _install_trl_probe(trainer, probe: Probe, workload: str) -> None:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            probe.train_begin = time.perf_counter()
            probe.threads_in_loop = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            probe.step_end()

    trainer.add_callback(StepTimer())
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        probe.micro_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    compute_loss = trainer.compute_loss

    def wrapped_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        result = compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        if model.training:
            probe.micro_losses.append(_float(loss))
            if not probe.first_metrics and workload == "dpo":
                metrics = trainer._metrics["train"]
                probe.first_metrics = {
                    k: float(metrics[k][-1]) for k in ("logps/chosen", "logps/rejected")
                }
        return result

    trainer.compute_loss = wrapped_compute_loss


def run_trl(workload: str, settings: Settings, data: Path) -> dict[str, Any]:
    probe = Probe()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{workload}-trl-", dir=data.parent))
    common = _trl_common(settings, workload, tmp / "run")
    path = settings.model_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra: dict[str, Any] = {}
    if workload == "sft":
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        dataset = _trl_dataset(data, ["prompt", "completion"], settings, tmp / "hf")
        args = SFTConfig(**common, packing=False, padding_free=False, completion_only_loss=True)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        n_params = count_matmul_params(model, lm_head=True)
    elif workload == "rm":
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        with torch.no_grad():
            model.score.weight.copy_(reward_head_init(model.config.hidden_size, settings.seed))
        dataset = _trl_dataset(
            data, ["prompt", "chosen", "rejected", "margin"], settings, tmp / "hf"
        )
        args = RewardConfig(**common, center_rewards_coefficient=None)
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        n_params = count_matmul_params(model, lm_head=False)
    elif workload == "dpo":
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        dataset = _trl_dataset(data, ["prompt", "chosen", "rejected"], settings, tmp / "hf")
        args = DPOConfig(
            **common,
            beta=settings.beta,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=True,  # as alignkit: reference scored once, outside the steps
            precompute_ref_batch_size=settings.batch_size,
        )
        trainer = DPOTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        n_params = count_matmul_params(model, lm_head=True)
        extra["precompute_ref_logps"] = True
    elif workload == "grpo":
        return run_trl_grpo(settings, data, probe)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    rows = [dict(r) for r in trainer.train_dataset]
    extra["tokens_match_alignkit"] = tokens_match(
        workload, rows, _alignkit_features(workload, data, tokenizer, settings)
    )
    _install_trl_probe(trainer, probe, workload)
    trainer.train()
    return probe.record(
        workload=workload, system="trl", settings=settings, n_params=n_params, **extra
    )


# ============================================================================= GRPO (later)
#
# The hook for GRPO: when alignkit.train.grpo exists (GRPOConfig, GRPOTrainer), implement the
# two functions below with the same pattern as DPO: the packaged prompts
# (alignkit.data.demo_path("prompt")), the same reward function on both sides (e.g. a length
# or a format reward written once here), the same group size G, max_new_tokens, temperature,
# sampling seed and number of updates. Count as tokens per step every prompt and completion
# token that went through a forward pass (generation included), time whole steps (rollout +
# update), and add the reference forwards per step to ref_forwards_per_step for the MFU.
# run.py lists "grpo" in WORKLOADS and skips it, with a note, until alignkit.train.grpo exists.


GRPO_RUNNERS_WRITTEN = False  # flip when run_alignkit_grpo / run_trl_grpo below are written


def grpo_available() -> tuple[bool, str]:
    """(ready, why not): GRPO runs once alignkit.train.grpo exists and the runners are written."""
    import importlib.util

    if importlib.util.find_spec("alignkit.train.grpo") is None:
        return False, "alignkit.train.grpo does not exist yet"
    if not GRPO_RUNNERS_WRITTEN:
        return False, "its runners are not written yet (hook in benchmarks/systems.py)"
    return True, ""


def run_alignkit_grpo(settings: Settings, data: Path, probe: Probe) -> dict[str, Any]:
    raise NotImplementedError("GRPO benchmark: see the hook comment in benchmarks/systems.py")


def run_trl_grpo(settings: Settings, data: Path, probe: Probe) -> dict[str, Any]:
    raise NotImplementedError("GRPO benchmark: see the hook comment in benchmarks/systems.py")


RUNNERS = {"alignkit": run_alignkit, "trl": run_trl}
