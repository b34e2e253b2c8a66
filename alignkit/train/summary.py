"""The table a trainer prints when it finishes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_NOT_METRICS = ("time", "epoch", "lr", "iteration")


def print_run_summary(
    command: str, config: Any, result: Any, console: Console | None = None
) -> None:
    """The last metrics of a FitResult (offline trainers) or an OnlineResult (PPO, GRPO)."""
    console = console or Console()
    unit = "iterations" if hasattr(result, "optimizer_steps") else "steps"
    table = Table(title=f"alignkit {command}: {result.steps} {unit}", show_header=True)
    table.add_column("metric")
    table.add_column("train (last log)", justify="right")
    table.add_column("eval (held out)", justify="right")
    train = {
        k: v
        for k, v in result.train_metrics.items()
        if isinstance(v, float) and k not in _NOT_METRICS
    }
    evals = {
        k.removeprefix("eval_"): v for k, v in result.eval_metrics.items() if k.startswith("eval_")
    }
    for name in sorted(set(train) | set(evals), key=lambda n: (n.count("/") > 1, n)):
        table.add_row(
            name,
            f"{train[name]:.4f}" if name in train else "",
            f"{evals[name]:.4f}" if name in evals else "",
        )
    console.print(table)
    if result.nonfinite_skips:
        console.print(
            f"[yellow]{result.nonfinite_skips} update(s) skipped for a NaN/Inf loss[/yellow]"
        )
    if getattr(result, "rollbacks", 0):
        console.print(
            f"[yellow]the guard rolled back {result.rollbacks} time(s); see events.jsonl[/yellow]"
        )
    if getattr(result, "stopped_by_guard", None):
        console.print(f"[red]stopped by the guard: {result.stopped_by_guard}[/red]")
    console.print(f"run folder: {config.output_dir}   model: {result.model_dir}")
