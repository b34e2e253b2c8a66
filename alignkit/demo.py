"""`alignkit demo`: the main job on the default model, with real numbers at every step.

1. Load the default model (converting its GGUF once) and let it answer held-out prompts.
2. Score a chosen and a rejected answer to each: the log-probabilities the model gives them.
3. Align it with DPO on the demo preference pairs (two user groups, the seeds' reward hacks
   as rejected answers), writing an ordinary run folder.
4. Score and answer the same held-out prompts again: the margins it learned, per group.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from alignkit.data import PreferenceExample, demo_path, load_dataset_records, train_eval_split
from alignkit.eval.likelihood import response_likelihoods
from alignkit.models import load_causal_lm
from alignkit.rollout.sampling import SamplingConfig, sample
from alignkit.train.dpo import DPOConfig, DPOTrainer
from alignkit.train.run_dir import read_jsonl
from alignkit.train.summary import print_run_summary


def _text(value) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def margin_table(
    title: str, model, tokenizer, pairs: list[PreferenceExample]
) -> tuple[Table, float]:
    """Per pair: log π(chosen), log π(rejected) and their difference; returns the mean margin."""
    table = Table(title=title)
    for column in ("prompt", "chosen", "log π(chosen)", "rejected", "log π(rejected)", "margin"):
        table.add_column(column, overflow="fold")
    margins = []
    for pair in pairs:
        chosen, rejected = response_likelihoods(
            model, tokenizer, pair.prompt, [pair.chosen, pair.rejected]
        )
        margin = chosen.logprob - rejected.logprob
        margins.append(margin)
        table.add_row(
            _text(pair.prompt),
            _text(pair.chosen),
            f"{chosen.logprob:.2f}",
            _text(pair.rejected),
            f"{rejected.logprob:.2f}",
            f"{margin:+.2f}",
        )
    return table, sum(margins) / len(margins)


def answers_table(title: str, model, tokenizer, pairs: list[PreferenceExample]) -> Table:
    rollout = sample(
        model,
        tokenizer,
        [pair.prompt for pair in pairs],
        SamplingConfig(max_new_tokens=48, do_sample=False),
    )
    table = Table(title=title)
    table.add_column("group")
    table.add_column("prompt", overflow="fold")
    table.add_column("answer", overflow="fold")
    for pair, text in zip(pairs, rollout.texts, strict=True):
        table.add_row(pair.group or "", _text(pair.prompt), text.strip())
    return table


def demo_config(model_name: str, output_dir: str | Path, steps: int) -> DPOConfig:
    """DPO settings sized for a 2-core CPU: a few minutes end to end."""
    return DPOConfig(
        model=model_name,
        dataset="demo",
        output_dir=str(output_dir),
        eval_fraction=0.1,
        max_steps=steps,
        batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-6,
        warmup_ratio=0.1,
        beta=0.1,
        max_length=128,
        max_prompt_length=64,
        log_every=5,
        eval_every=max(steps // 2, 1),
        save_every=0,
        report_to_tensorboard=False,
    )


def run_demo(model_name: str, output_dir: str | Path | None = None, steps: int = 40) -> dict:
    console = Console()
    started = time.perf_counter()
    if output_dir is None:
        output_dir = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = demo_config(model_name, output_dir, steps)
    model, tokenizer = load_causal_lm(model_name)
    console.print(
        f"[bold]model[/bold] {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, loaded in {time.perf_counter() - started:.1f} s"
    )
    records = load_dataset_records(str(demo_path("preference")), "preference")
    _, held_out = train_eval_split(records, cfg.eval_fraction, seed=cfg.seed)
    shown = _one_per_group(held_out, per_group=2)

    console.print(
        answers_table("before: the model answers held-out prompts", model, tokenizer, shown)
    )
    table, margin_before = margin_table(
        "before: log π of a preferred and a rejected answer", model, tokenizer, shown
    )
    console.print(table)

    console.rule(
        f"DPO, {steps} steps on {len(records) - len(held_out)} preference pairs → {output_dir}"
    )
    result = DPOTrainer(cfg, model=model, tokenizer=tokenizer).train()
    print_run_summary("dpo (demo)", cfg, result, console)

    table, margin_after = margin_table(
        "after: log π of a preferred and a rejected answer", model, tokenizer, shown
    )
    console.print(table)
    console.print(
        answers_table("after: the aligned model answers the same prompts", model, tokenizer, shown)
    )
    evals = [
        r for r in read_jsonl(Path(output_dir) / "metrics.jsonl") if "eval_rewards/margins" in r
    ]
    first, last = evals[0], evals[-1]
    console.print(
        f"held-out pairs ({len(held_out)}): preference accuracy "
        f"{first['eval_rewards/accuracies']:.2f} → {last['eval_rewards/accuracies']:.2f}, "
        f"mean log-ratio margin {first['eval_rewards/margins'] / cfg.beta:+.2f} → "
        f"{last['eval_rewards/margins'] / cfg.beta:+.2f} nats; shown pairs' log π margin "
        f"{margin_before:+.2f} → {margin_after:+.2f}; {time.perf_counter() - started:.0f} s in all"
    )
    return {
        "first_eval": first,
        "last_eval": last,
        "margin_before": margin_before,
        "margin_after": margin_after,
    }


def _one_per_group(pairs: list[PreferenceExample], per_group: int) -> list[PreferenceExample]:
    picked: dict[str | None, list[PreferenceExample]] = {}
    for pair in pairs:
        bucket = picked.setdefault(pair.group, [])
        if len(bucket) < per_group:
            bucket.append(pair)
    return [pair for bucket in picked.values() for pair in bucket]
