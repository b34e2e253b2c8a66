"""`alignkit data check`: read and validate a data file with the trainers' own code, and
summarise it (rows, format, columns, groups, token lengths, duplicates)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.records import PreferenceExample, SFTExample, load_records
from alignkit.data.tokenization import encode_pair, encode_prompt, template_errors

NO_GROUP = "(none)"


@dataclass
class DataSummary:
    path: str
    format: str
    num_rows: int
    num_valid: int
    num_dropped: int
    drop_reasons: list[str]
    columns: list[str]
    groups: dict[str, int]
    num_conversational: int
    num_implicit_prompt: int
    num_duplicates: int
    num_with_margin: int = 0
    # {"prompt": {"p50": .., "p90": .., "p99": .., "max": ..}, "chosen": {...}, ...}
    token_lengths: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _stats(values: list[int]) -> dict[str, int]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def _token_ids(rec: PreferenceExample | SFTExample | Any, tokenizer) -> dict[str, list[int]]:
    """The record's parts as the trainers tokenize them: prompt and each response."""
    if isinstance(rec, PreferenceExample):
        p, c = encode_pair(rec.prompt, rec.chosen, tokenizer)
        _, r = encode_pair(rec.prompt, rec.rejected, tokenizer)
        return {"prompt": p, "chosen": c, "rejected": r}
    if isinstance(rec, SFTExample):
        p, c = encode_pair(rec.prompt, rec.completion, tokenizer)
        return {"prompt": p, "completion": c}
    return {"prompt": encode_prompt(rec.prompt, tokenizer)}


def check_dataset(
    path: str | Path,
    format: str | None = None,
    tokenizer=None,
    drop_invalid: bool = False,
    *,
    split: str = "train",
) -> DataSummary:
    """Validate ``path`` exactly as the trainers do (raises DataError unless drop_invalid)."""
    result = load_records(path, format, split=split, drop_invalid=drop_invalid)
    records = result.records
    groups = Counter(r.group if r.group is not None else NO_GROUP for r in records)
    summary = DataSummary(
        path=str(path),
        format=result.format,
        num_rows=result.num_rows,
        num_valid=len(records),
        num_dropped=result.num_dropped,
        drop_reasons=list(result.drop_reasons),
        columns=list(result.columns),
        groups=dict(sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))),
        num_conversational=sum(1 for r in records if r.conversational),
        num_implicit_prompt=result.num_implicit_prompt,
        num_duplicates=result.num_duplicates,
        num_with_margin=sum(1 for r in records if getattr(r, "margin", None) is not None),
    )
    if tokenizer is not None:
        lengths: dict[str, list[int]] = {}
        for index, rec in enumerate(records, start=1):
            with template_errors(rec, index):
                parts = _token_ids(rec, tokenizer)
            for name, ids in parts.items():
                lengths.setdefault(name, []).append(len(ids))
        summary.token_lengths = {name: _stats(v) for name, v in lengths.items()}
    return summary


def render_summary(summary: DataSummary, console=None) -> None:
    """Print the summary with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{summary.path}[/bold]")
    info = Table(show_header=False, box=None, pad_edge=False)
    info.add_column(style="dim")
    info.add_column()
    info.add_row("format", summary.format)
    info.add_row("rows", str(summary.num_rows))
    info.add_row("valid", str(summary.num_valid))
    if summary.num_dropped:
        info.add_row("dropped", f"[yellow]{summary.num_dropped}[/yellow]")
    info.add_row("columns", ", ".join(summary.columns))
    info.add_row("conversational", str(summary.num_conversational))
    if summary.num_implicit_prompt:
        info.add_row("implicit prompt", str(summary.num_implicit_prompt))
    if summary.format == "preference":
        info.add_row("with margin", str(summary.num_with_margin))
    dup_style = "yellow" if summary.num_duplicates else "green"
    info.add_row("exact duplicates", f"[{dup_style}]{summary.num_duplicates}[/{dup_style}]")
    console.print(info)

    if summary.drop_reasons:
        console.print("[yellow]first dropped rows:[/yellow]")
        for reason in summary.drop_reasons:
            console.print(f"  {reason}", markup=False, highlight=False, soft_wrap=True)

    groups = Table(title="groups", title_justify="left")
    groups.add_column("group")
    groups.add_column("rows", justify="right")
    groups.add_column("share", justify="right")
    for name, count in summary.groups.items():
        groups.add_row(name, str(count), f"{count / max(summary.num_valid, 1):.0%}")
    console.print(groups)

    if summary.token_lengths:
        lengths = Table(title="token lengths", title_justify="left")
        lengths.add_column("part")
        for col in ("p50", "p90", "p99", "max"):
            lengths.add_column(col, justify="right")
        for name, stats in summary.token_lengths.items():
            lengths.add_row(name, *(str(stats[c]) for c in ("p50", "p90", "p99", "max")))
        console.print(lengths)
