"""One (workload, system) run inside a child process: alignkit's trainers or TRL's, same work.

Both systems get the same model folder, the same data file (a subset of the packaged demo
data), the same data ORDER (TRL reads the rows in alignkit's epoch permutation with a
sequential sampler), the same batch size, lengths, AdamW (torch's, fused), learning rate
(constant, no warm-up), clipping and number of steps, float32, no evaluation, no saving
during training. What is timed and counted is defined in :mod:`benchmarks.core`.

Timing hooks: alignkit's :class:`~alignkit.train.engine.Engine` is wrapped at class level
(``fit`` to count each batch's tokens, ``backward_and_step`` to mark step ends and record the
loss); TRL gets a ``TrainerCallback`` (``on_step_end``), a counting data collator and a
``compute_loss`` wrapper. GRPO counts tokens where the samples are made instead (alignkit:
the trainer's ``sample``; TRL: its ``_generate``). Neither hook changes what the trainers
compute.
"""

from __future__ import annotations

import hashlib
import json
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
    micro_generated: list[int] = field(default_factory=list)  # GRPO: completion tokens sampled
    # tokens with each prompt shared by a pair / GRPO group counted once (the MFU numerator)
    micro_unique_tokens: list[int] = field(default_factory=list)
    prompt_digests: list[str] = field(default_factory=list)  # GRPO: the prompt ids of each step
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
        if self.micro_unique_tokens:
            extra["step_unique_tokens"] = self.per_step(self.micro_unique_tokens, accum, sum)
        if self.micro_generated:  # GRPO: one generation per optimizer step
            extra["step_generated_tokens"] = self.micro_generated[: len(self.step_ends)]
            extra["step_prompt_digests"] = self.prompt_digests[: len(self.step_ends)]
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
            real = int(batch["attention_mask"].sum())
            probe.micro_tokens.append(real)
            # preference batches: each pair's prompt once (it is in both rows)
            shared = batch.get("prompt_lengths")
            probe.micro_unique_tokens.append(real - (0 if shared is None else int(shared.sum())))
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
    if workload == "grpo":
        return run_alignkit_grpo(settings, data, Probe())
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
        elif workload == "grpo":  # prompt token ids, one row per completion
            ok = t == a
        else:
            ok = False
        same += bool(ok)
    return same / max(1, len(trl_rows))


def _trl_step_timer(probe: Probe):
    """A TrainerCallback that marks the start of training and the end of each optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            probe.train_begin = time.perf_counter()
            probe.threads_in_loop = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            probe.step_end()

    return StepTimer()


def _install_trl_probe(trainer, probe: Probe, workload: str) -> None:
    trainer.add_callback(_trl_step_timer(probe))
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        probe.micro_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    _record_trl_losses(trainer, probe, workload)


def _record_trl_losses(trainer, probe: Probe, workload: str) -> None:
    """Each training micro-batch's loss into the probe (DPO: also the first batch's mean
    chosen and rejected log-probs)."""
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
    if workload == "grpo":
        return run_trl_grpo(settings, data, Probe())
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


# ============================================================================= GRPO
#
# Both systems get the packaged demo prompts (the first `settings.examples_for("grpo")` rows)
# in the order alignkit's PromptStream draws them (TRL: that order, shuffle_dataset=False),
# `grpo_prompts` prompts × `num_generations` completions per optimizer step and one generation
# per step; every completion exactly `max_new_tokens` tokens long (EOS held back: alignkit
# min_new_tokens, TRL generation_kwargs={"min_new_tokens": ...}); temperature 1, top_p 1, no
# top-k; β = grpo_beta > 0, so both keep a frozen reference and score it every step; μ = 1;
# advantages (r − group mean) / (group std + 1e-4); the per-sequence mean loss (alignkit
# loss_normalization="sequence" = TRL loss_type="grpo"); ε = clip_eps; the same reward
# function (benchmarks.rewards). Tokens per step: prompt + completion tokens of the step's
# sequences; generated tokens per step: completion tokens.

GRPO_RUNNERS_WRITTEN = True  # run_alignkit_grpo / run_trl_grpo below are written


def grpo_available() -> tuple[bool, str]:
    """(ready, why not): GRPO runs once alignkit.train.grpo exists and the runners are written."""
    import importlib.util

    if importlib.util.find_spec("alignkit.train.grpo") is None:
        return False, "alignkit.train.grpo does not exist yet"
    if not GRPO_RUNNERS_WRITTEN:
        return False, "its runners are not written yet (hook in benchmarks/systems.py)"
    return True, ""


def prompt_digest(rows: list[list[int]]) -> str:
    """A fingerprint of one step's prompt token ids (one row per completion, order-free)."""
    return hashlib.sha1(json.dumps(sorted(rows)).encode()).hexdigest()[:16]


def grpo_prompt_order(n: int, settings: Settings) -> list[int]:
    """Indices of the rows alignkit's GRPO loop draws, step after step (its PromptStream)."""
    from alignkit.train.sampler import PromptStream

    stream = PromptStream(list(range(n)), settings.grpo_prompts, settings.seed)
    return [i for step in range(settings.total_steps) for i in stream.batch(step)]


def _alignkit_grpo_rows(data: Path, tokenizer, settings: Settings) -> list[list[int]]:
    """alignkit's prompt token ids, one row per completion, in the order it samples them."""
    from alignkit.data import load_dataset_records
    from alignkit.data.tokenization import encode_prompt

    records = load_dataset_records(str(data), "prompt")
    rows = []
    for i in grpo_prompt_order(len(records), settings):
        ids = encode_prompt(records[i].prompt, tokenizer)[-settings.max_prompt_length :]
        rows += [ids] * settings.num_generations
    return rows


def _grpo_extra(settings: Settings, **more: Any) -> dict[str, Any]:
    if settings.gradient_accumulation_steps != 1:
        raise ValueError(
            "the GRPO benchmark makes one generation per optimizer step (no accumulation)"
        )
    return dict(
        ref_forwards_per_step=1,  # β > 0: one reference forward over the step's sequences
        prompts_per_step=settings.grpo_prompts,
        num_generations=settings.num_generations,
        max_new_tokens=settings.max_new_tokens,
        grpo_beta=settings.grpo_beta,
        **more,
    )


def run_alignkit_grpo(settings: Settings, data: Path, probe: Probe) -> dict[str, Any]:
    from alignkit.train.grpo import GRPOConfig, GRPOTrainer
    from benchmarks.rewards import REWARD_SPEC

    # at μ = 1 with one minibatch both take the old log-probs from the update's forward
    extra = _grpo_extra(settings, loss_aggregation="sequence", old_logps_forward=False)
    _install_alignkit_probe(probe)
    out = Path(tempfile.mkdtemp(prefix="bench-grpo-alignkit-", dir=data.parent)) / "run"
    common = _alignkit_common(settings, "grpo", data, out)
    common.update(batch_size=settings.grpo_prompts, gradient_accumulation_steps=1)
    length = settings.max_new_tokens
    cfg = GRPOConfig(
        **common,
        num_generations=settings.num_generations,
        max_new_tokens=length,
        min_new_tokens=length,  # EOS held back: every completion is exactly `length` tokens
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        kl_coef=settings.grpo_beta,
        kl_target=None,
        advantage_estimator="group_norm",
        scale_rewards=True,
        loss_normalization="sequence",
        clip_eps=settings.clip_eps,
        clip_eps_high=None,
        num_iterations=1,
        num_minibatches=1,
        segment_weighting=0.0,
        reward={"reward_functions": [REWARD_SPEC]},
        missing_eos_penalty=None,
        guard={"detectors": {}},  # no run guard (TRL has none): no events inside the loop
        rollouts_every=0,
    )
    import alignkit.train.online_loop as loop_module

    trainer = GRPOTrainer(cfg)
    original_sample = loop_module.sample_responses

    def counting_sample(*args, **kwargs):
        if probe.train_begin is None:
            probe.train_begin = time.perf_counter()
            probe.threads_in_loop = torch.get_num_threads()
        rollout, sequences = original_sample(*args, **kwargs)
        rows = [
            ids[mask.bool()].tolist()
            for ids, mask in zip(rollout.prompt_ids, rollout.prompt_mask, strict=True)
        ]
        probe.prompt_digests.append(prompt_digest(rows))
        probe.micro_tokens.append(int(sequences.attention_mask.sum()))
        probe.micro_generated.append(int(sequences.response_lengths.sum()))
        group = settings.num_generations  # rows i·G .. i·G+G−1 answer prompt i
        unique_prompts = sum(len(row) for row in rows[::group])
        probe.micro_unique_tokens.append(unique_prompts + probe.micro_generated[-1])
        return rollout, sequences

    n_params = count_matmul_params(trainer.policy, lm_head=True)
    loop_module.sample_responses = counting_sample  # the trainer's step 1 goes through it
    try:
        trainer.train()
    finally:
        loop_module.sample_responses = original_sample
    return probe.record(
        workload="grpo", system="alignkit", settings=settings, n_params=n_params, **extra
    )


def run_trl_grpo(settings: Settings, data: Path, probe: Probe) -> dict[str, Any]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from benchmarks.rewards import letter_share

    extra = _grpo_extra(settings, loss_aggregation="grpo", old_logps_forward=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpo-trl-", dir=data.parent))
    path = settings.model_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(tmp / "hf"))
    dataset = dataset.select_columns(["prompt"])
    dataset = dataset.select(grpo_prompt_order(len(dataset), settings))
    common = _trl_common(settings, "grpo", tmp / "run")
    del common["max_length"]  # GRPOConfig has none (no demo prompt nears alignkit's limit)
    common.update(
        per_device_train_batch_size=settings.grpo_prompts * settings.num_generations,  # completions
        gradient_accumulation_steps=1,
    )
    length = settings.max_new_tokens
    args = GRPOConfig(
        **common,
        num_generations=settings.num_generations,
        steps_per_generation=1,  # generation batch = one optimizer step's completions
        shuffle_dataset=False,  # the rows are already in alignkit's order
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},  # EOS held back, as alignkit
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        beta=settings.grpo_beta,
        num_iterations=1,
        epsilon=settings.clip_eps,
        epsilon_high=None,
        loss_type="grpo",  # per-sequence token mean, then mean over completions
        scale_rewards="group",
        importance_sampling_level="token",
        use_bias_correction_kl=False,  # alignkit's k3 term is not multiplied by the ratio
        mask_truncated_completions=False,
        top_entropy_quantile=1.0,
        entropy_coef=0.0,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=letter_share,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    n_params = count_matmul_params(model, lm_head=True)
    trainer.add_callback(_trl_step_timer(probe))
    seen_rows: list[list[int]] = []
    original_generate = trainer._generate

    def counting_generate(prompts):
        result = original_generate(prompts)
        if trainer.model.training:
            prompt_ids, completion_ids = result[0], result[1]
            rows = [[int(t) for t in ids] for ids in prompt_ids]
            seen_rows.extend(rows)
            probe.prompt_digests.append(prompt_digest(rows))
            generated = sum(len(c) for c in completion_ids)
            probe.micro_tokens.append(sum(len(r) for r in rows) + generated)
            probe.micro_generated.append(generated)
        return result

    trainer._generate = counting_generate
    _record_trl_losses(trainer, probe, "grpo")
    trainer.train()
    expected = _alignkit_grpo_rows(data, tokenizer, settings)
    extra["tokens_match_alignkit"] = tokens_match("grpo", seen_rows, expected[: len(seen_rows)])
    return probe.record(
        workload="grpo", system="trl", settings=settings, n_params=n_params, **extra
    )


RUNNERS = {"alignkit": run_alignkit, "trl": run_trl}
