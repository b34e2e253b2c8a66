"""`alignkit demo`: the main job on the default model, with real numbers at every step.

1. Load the default model (converting its GGUF once) and let it answer a few held-out prompts.
2. Score a chosen and a rejected answer to each: the log-probabilities the model gives them.
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


def run_demo(model_name: str, output_dir: str | Path = "runs/demo", steps: int = 40) -> dict:
    console = Console()
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(model_name)
    console.print(
        f"[bold]model[/bold] {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, loaded in {time.perf_counter() - started:.1f} s"
    )
    records = load_dataset_records(str(demo_path("preference")), "preference")
    _, held_out = train_eval_split(records, eval_fraction=0.1, seed=0)
    shown = held_out[:4]

    rollout = sample(
        model,
        tokenizer,
        [pair.prompt for pair in shown],
        SamplingConfig(max_new_tokens=48, do_sample=False),
    )
    answers = Table(title="the model answers held-out prompts (greedy)")
    answers.add_column("prompt", overflow="fold")
    answers.add_column("answer", overflow="fold")
    for pair, text in zip(shown, rollout.texts, strict=True):
        answers.add_row(_text(pair.prompt), text.strip())
    console.print(answers)

    table, mean_margin = margin_table(
        "log-probabilities of a preferred and a rejected answer", model, tokenizer, shown
    )
    console.print(table)
    console.print(f"mean margin log π(chosen) − log π(rejected): {mean_margin:+.3f}")
    return {"mean_margin": mean_margin}
