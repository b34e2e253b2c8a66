"""The pure parts of the benchmark harness: settings, the result record, FLOPs and MFU, ratios.

Nothing here imports alignkit or TRL, so it is cheap to import and to test.

Definitions (the same for every system):

- *tokens per step*: real (non-pad) tokens of every sequence the optimizer step processed,
  i.e. the sum of ``attention_mask`` over the step's micro-batches (DPO and RM: chosen and
  rejected rows, prompt included; SFT: prompt + completion; GRPO: prompt + completion of
  every sampled sequence of the step). GRPO also counts *generated tokens per step*
  (completion tokens sampled) and reports ``generated_tokens_per_s``.
- *step time*: wall time between the ends of two consecutive optimizer steps (forward,
  backward, clipping, AdamW, data loading, per-step bookkeeping). The first ``warmup_steps``
  steps are excluded; ``step_s_median`` is the median of the timed steps and
  ``tokens_per_s`` = Σ tokens / Σ seconds over the timed steps.
- *model FLOPs*: ``6·N`` per token for forward + backward, plus ``2·N`` per token for every
  reference forward done inside the step (0 when reference log-probs are precomputed), plus,
  for GRPO, ``2·N`` per *generated* token (one decoding forward each; the prompt prefill
  during generation is not counted).
  ``N`` counts the parameters that take part in a matmul for every token: all parameters
  except the input-embedding table, plus the LM head when the workload runs it (for a model
  with tied embeddings that is simply all parameters). Attention-score FLOPs are left out
  (sequences here are short). ``mfu`` = model FLOP/s ÷ the measured float32 matmul peak.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SYSTEMS = ("alignkit", "trl")

# Every record carries at least these keys (the schema), plus the ones in RECORD_EXTRA.
RECORD_KEYS = (
    "workload",
    "system",
    "model",
    "tokens_per_s",
    "step_s_median",
    "peak_rss_mib",
    "mfu",
    "first_loss",
)


@dataclass
class Settings:
    """What both systems run with: identical for alignkit and TRL."""

    model: str = "smollm2-135m-instruct"
    model_path: str | None = None  # the local folder both systems load (set by run.py)
    quick: bool = False
    batch_size: int = 4  # examples (SFT) or pairs (RM, DPO) per micro-batch
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 2  # optimizer steps run before timing starts
    timed_steps: int = 8
    max_length: int = 512  # no demo example is longer, so neither system truncates
    max_prompt_length: int = 256
    learning_rates: dict[str, float] = field(
        default_factory=lambda: {"sft": 2e-5, "rm": 2e-5, "dpo": 5e-6, "grpo": 1e-6}
    )
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    beta: float = 0.1  # DPO β
    # GRPO: prompts per optimizer step × num_generations completions, each exactly
    # max_new_tokens long (EOS held back on both sides), one generation per optimizer step
    grpo_prompts: int = 2
    num_generations: int = 4
    max_new_tokens: int = 32
    grpo_beta: float = 0.04  # β > 0: a frozen reference scored every step on both sides
    clip_eps: float = 0.2
    seed: int = 42
    threads: int = 2
    matmul_size: int = 2048
    # TRL's optimizer: "adamw_torch_fused" (TRL's own default) is torch.optim.AdamW with the
    # fused kernel, exactly what alignkit builds; "adamw_torch" is the slower foreach one.
    trl_optim: str = "adamw_torch_fused"

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    @property
    def num_examples(self) -> int:
        """Examples the run consumes: exactly one pass, no example seen twice."""
        return self.total_steps * self.batch_size * self.gradient_accumulation_steps

    def examples_for(self, workload: str) -> int:
        """Rows of the demo data the workload consumes (GRPO: prompts)."""
        if workload == "grpo":
            return self.total_steps * self.grpo_prompts
        return self.num_examples

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


def quick_settings(**overrides: Any) -> Settings:
    """The tiny random model, a few steps, one thread (robust to a busy machine): seconds."""
    base = dict(model="tiny-random-llama", quick=True, warmup_steps=1, timed_steps=3, threads=1)
    base.update(overrides)
    return Settings(**base)


# ----------------------------------------------------------------------------- step statistics


def step_times(step_ends: Sequence[float], warmup_steps: int) -> list[float]:
    """Durations of the timed steps from the wall-clock ends of all steps.

    Step k (0-based) lasts ``ends[k] − ends[k−1]``; step 0 has no start mark, so at least one
    warm-up step is required.
    """
    if warmup_steps < 1:
        raise ValueError("warmup_steps must be >= 1 (step 0 has no start time)")
    if len(step_ends) <= warmup_steps:
        raise ValueError(f"{len(step_ends)} steps recorded, need more than {warmup_steps}")
    starts, ends = step_ends[warmup_steps - 1 : -1], step_ends[warmup_steps:]
    return [b - a for a, b in zip(starts, ends, strict=True)]


def summarize_steps(
    step_ends: Sequence[float],
    step_tokens: Sequence[int],
    warmup_steps: int,
    step_generated_tokens: Sequence[int] | None = None,
) -> dict[str, float]:
    """tokens_per_s, step_s_median, timed_steps and timed_tokens over the timed steps; with
    ``step_generated_tokens`` (GRPO) also generated_tokens_per_s and timed_generated_tokens."""
    times = step_times(step_ends, warmup_steps)
    total_s = sum(times)

    def timed(counts: Sequence[int], what: str) -> list[int]:
        window = list(counts[warmup_steps : warmup_steps + len(times)])
        if len(window) != len(times):
            raise ValueError(f"{len(times)} timed steps but {len(window)} {what} counts")
        return window

    tokens = timed(step_tokens, "token")
    out = {
        "tokens_per_s": sum(tokens) / total_s if total_s > 0 else float("nan"),
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "timed_steps": len(times),
        "timed_tokens": sum(tokens),
    }
    if step_generated_tokens is not None:
        generated = timed(step_generated_tokens, "generated-token")
        out["generated_tokens_per_s"] = sum(generated) / total_s if total_s > 0 else float("nan")
        out["timed_generated_tokens"] = sum(generated)
    return out


# ----------------------------------------------------------------------------- FLOPs and MFU


def matmul_flops(n: int) -> float:
    """FLOPs of one n×n by n×n matmul (a multiply and an add per inner-product term)."""
    return 2.0 * n**3


def model_flops_per_token(n_params: int, ref_forwards: int = 0) -> float:
    """6·N for forward + backward of the trained model, plus 2·N per reference forward."""
    if n_params < 0 or ref_forwards < 0:
        raise ValueError("n_params and ref_forwards must be >= 0")
    return 6.0 * n_params + 2.0 * n_params * ref_forwards


def generation_flops_per_token(n_params: int) -> float:
    """2·N per generated token: one forward of one new token (KV-cached decoding)."""
    if n_params < 0:
        raise ValueError("n_params must be >= 0")
    return 2.0 * n_params


def model_flops_per_s(
    tokens_per_s: float,
    n_params: int,
    ref_forwards: int = 0,
    generated_tokens_per_s: float = 0.0,
) -> float:
    """Trained tokens × (6·N + 2·N per reference forward) + generated tokens × 2·N, per second."""
    return tokens_per_s * model_flops_per_token(
        n_params, ref_forwards
    ) + generated_tokens_per_s * generation_flops_per_token(n_params)


def mfu(
    tokens_per_s: float,
    n_params: int,
    peak_flops: float,
    ref_forwards: int = 0,
    generated_tokens_per_s: float = 0.0,
) -> float:
    """Model FLOP/s as a fraction of the measured peak."""
    if peak_flops <= 0:
        raise ValueError("peak_flops must be positive")
    flops = model_flops_per_s(tokens_per_s, n_params, ref_forwards, generated_tokens_per_s)
    return flops / peak_flops


def count_matmul_params(model: Any, *, lm_head: bool) -> int:
    """N of the FLOP model: unique parameters minus the input embedding table; plus the
    output projection when ``lm_head`` (with tied weights that is the table itself)."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embeddings = model.get_input_embeddings().weight
    n = total - embeddings.numel()
    if lm_head:
        head = model.get_output_embeddings().weight
        if head is embeddings:
            n += head.numel()
    return n


# ----------------------------------------------------------------------------- records


def make_record(
    *,
    workload: str,
    system: str,
    model: str,
    step_ends: Sequence[float],
    step_tokens: Sequence[int],
    losses: Sequence[float],
    peak_rss_mib: float,
    n_params: int,
    warmup_steps: int,
    ref_forwards_per_step: int = 0,
    step_generated_tokens: Sequence[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One (workload, system) result; ``mfu`` is filled in by :func:`add_mfu` (needs the peak).

    ``step_generated_tokens`` (GRPO): completion tokens sampled in each step."""
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    record: dict[str, Any] = {
        "workload": workload,
        "system": system,
        "model": model,
        **summarize_steps(step_ends, step_tokens, warmup_steps, step_generated_tokens),
        "peak_rss_mib": float(peak_rss_mib),
        "mfu": None,
        "first_loss": float(losses[0]) if losses else float("nan"),
        "losses": [float(x) for x in losses],
        "step_tokens": [int(t) for t in step_tokens],
        "n_params": int(n_params),
        "ref_forwards_per_step": int(ref_forwards_per_step),
    }
    if step_generated_tokens is not None:
        record["step_generated_tokens"] = [int(t) for t in step_generated_tokens]
    record.update(extra)
    return record


def unique_fraction(record: dict[str, Any], warmup_steps: int) -> float:
    """Σ unique tokens ÷ Σ tokens over the timed steps of a record that counted both (1.0
    when it did not): the share of a step's tokens left when each prompt shared by a
    preference pair or a GRPO group is counted once."""
    unique = record.get("step_unique_tokens")
    if not unique:
        return 1.0
    steps = record["timed_steps"]
    tokens = record["step_tokens"][warmup_steps : warmup_steps + steps]
    return sum(unique[warmup_steps : warmup_steps + steps]) / sum(tokens)


def add_mfu(
    record: dict[str, Any],
    peak_flops: float,
    n_params: int | None = None,
    unique_share: float = 1.0,
) -> None:
    """Fill ``mfu`` and ``model_tflops`` from tokens_per_s (every real token, a shared
    prompt once per sequence: the issue's definition), and ``mfu_unique`` and
    ``unique_tokens_per_s`` from the unique tokens per second (tokens_per_s ×
    `unique_share`: each shared prompt once, the work that has to be done), N and the
    measured peak."""
    n = record["n_params"] if n_params is None else n_params
    ref = record.get("ref_forwards_per_step", 0)
    generated = record.get("generated_tokens_per_s") or 0.0
    unique = record["tokens_per_s"] * unique_share
    record["unique_tokens_per_s"] = unique
    record["mfu"] = mfu(record["tokens_per_s"], n, peak_flops, ref, generated)
    record["mfu_unique"] = mfu(unique, n, peak_flops, ref, generated)
    record["model_tflops"] = model_flops_per_s(record["tokens_per_s"], n, ref, generated) / 1e12


def validate_record(record: dict[str, Any]) -> None:
    """Raise ValueError when a record lacks a key of the schema or has an impossible value."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"record misses {missing}")
    if record["system"] not in SYSTEMS:
        raise ValueError(f"unknown system {record['system']!r}")
    keys = ["tokens_per_s", "step_s_median", "peak_rss_mib"]
    if "generated_tokens_per_s" in record:
        keys.append("generated_tokens_per_s")
    for key in keys:
        value = record[key]
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    if record["mfu"] is not None and not (0 <= record["mfu"] < 10):
        raise ValueError(f"mfu out of range: {record['mfu']}")


# ----------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """alignkit vs TRL on one workload."""

    workload: str
    versus: str  # which TRL run: "trl" (matched settings) or its variant's name
    speed_ratio: float  # alignkit tokens/s ÷ TRL tokens/s
    memory_ratio: float  # alignkit peak RSS ÷ TRL peak RSS
    first_loss_diff: float  # |alignkit − TRL| of the first step's loss
    second_loss_diff: float | None  # same, for the loss after one optimizer update
    same_batches: bool  # identical tokens per step (GRPO: also generated tokens and prompt ids)
    tokens_match: float | None  # fraction of rows TRL tokenized exactly as alignkit did
    first_logps_diff: float | None  # DPO: max |Δ| of the first batch's mean chosen/rejected logps
    speed_target: float | None
    speed_met: bool | None
    memory_met: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Targets from the issue "Benchmarks against TRL": alignkit/TRL tokens-per-second ratio.
SPEED_TARGETS = {"dpo": 1.75, "sft": 1.3, "rm": 1.3, "grpo": 2.0}
DPO_MFU_TARGET = 0.65


def headline_comparisons(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Per workload (in first-seen order), the comparison against the fastest TRL run of the
    same benchmark run: the lowest alignkit/TRL speed ratio (every comparison of a workload
    shares one alignkit record). The headline and its target are judged against the TRL
    that did best here, whichever setting made it so; the others stay beside it."""
    best: dict[str, Comparison] = {}
    for c in comparisons:
        if c.workload not in best or c.speed_ratio < best[c.workload].speed_ratio:
            best[c.workload] = c
    return list(best.values())


def compare(alignkit: dict[str, Any], trl: dict[str, Any]) -> Comparison:
    if alignkit["workload"] != trl["workload"]:
        raise ValueError("records of different workloads")
    workload = alignkit["workload"]
    versus = trl.get("variant") or "trl"
    speed = alignkit["tokens_per_s"] / trl["tokens_per_s"]
    memory = alignkit["peak_rss_mib"] / trl["peak_rss_mib"]
    a_losses, t_losses = alignkit.get("losses", []), trl.get("losses", [])
    second = abs(a_losses[1] - t_losses[1]) if len(a_losses) > 1 and len(t_losses) > 1 else None
    target = SPEED_TARGETS.get(workload)
    same_batches = alignkit.get("step_tokens") == trl.get("step_tokens")
    for key in ("step_generated_tokens", "step_prompt_digests"):  # GRPO only
        same_batches = same_batches and alignkit.get(key) == trl.get(key)
    a_first, t_first = alignkit.get("first_metrics") or {}, trl.get("first_metrics") or {}
    shared = [k for k in ("logps/chosen", "logps/rejected") if k in a_first and k in t_first]
    logps_diff = max((abs(a_first[k] - t_first[k]) for k in shared), default=None)
    return Comparison(
        workload=workload,
        versus=versus,
        speed_ratio=speed,
        memory_ratio=memory,
        first_loss_diff=abs(alignkit["first_loss"] - trl["first_loss"]),
        second_loss_diff=second,
        same_batches=same_batches,
        tokens_match=trl.get("tokens_match_alignkit"),
        first_logps_diff=logps_diff,
        speed_target=target,
        speed_met=None if target is None else speed >= target,
        memory_met=memory <= 1.0,
    )
