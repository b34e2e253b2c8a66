"""Figures per user segment — the data's `group` column: users who want different things —
and the gap between the best and the worst segment, combined across processes.

"Segment" is the user-facing group of a prompt; GRPO's "group" is the G samples of one
prompt. Metric names keep the data's word: `<prefix>/<segment>` and `<prefix>/group_gap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COUNT_SUFFIX = "#count"  # `<prefix>/<segment>#count`: rows behind a per-segment figure
GAP = "group_gap"


def segment_figures(
    values: torch.Tensor,
    segments: Sequence[str | None],
    *,
    prefix: str,
    with_counts: bool = False,
) -> dict[str, float]:
    """Mean of `values` per user segment (rows without one are left out), and the gap
    between the best and the worst segment; with `with_counts`, also each segment's row
    count (`<prefix>/<segment>#count`) so that :func:`combine_process_metrics` can weight
    and re-take the gap across processes."""
    by_segment: dict[str, list[float]] = {}
    for value, segment in zip(values.tolist(), segments, strict=True):
        if segment is not None:
            by_segment.setdefault(segment, []).append(value)
    figures = {f"{prefix}/{s}": sum(v) / len(v) for s, v in sorted(by_segment.items())}
    if len(figures) > 1:
        figures[f"{prefix}/{GAP}"] = max(figures.values()) - min(figures.values())
    if with_counts:
        figures.update(
            {f"{prefix}/{s}{COUNT_SUFFIX}": float(len(v)) for s, v in by_segment.items()}
        )
    return figures


def combine_process_metrics(per_process: Sequence[dict[str, float]]) -> dict[str, float]:
    """One set of metrics from each process's: a per-segment figure that carries its row
    count (`<key>#count`, from ``segment_figures(..., with_counts=True)``) is the
    count-weighted mean over processes, and `<prefix>/group_gap` is recomputed from the
    combined segment means (a process may see one segment only, or none); any other metric
    is the mean over the processes that have it. Counts are not returned; keys are sorted."""
    keys = sorted(set().union(*per_process))
    combined: dict[str, float] = {}
    for key in keys:
        if key.endswith(COUNT_SUFFIX):
            continue
        having = [m for m in per_process if key in m]
        counts = [m.get(key + COUNT_SUFFIX) for m in having]
        if all(c is not None for c in counts) and sum(counts) > 0:
            weighted = sum(m[key] * c for m, c in zip(having, counts, strict=True))
            combined[key] = weighted / sum(counts)
        else:
            combined[key] = sum(m[key] for m in having) / len(having)
    segments_by_prefix: dict[str, list[float]] = {}
    for key in keys:
        if key.endswith(COUNT_SUFFIX):
            figure = key[: -len(COUNT_SUFFIX)]
            segments_by_prefix.setdefault(figure.rsplit("/", 1)[0], []).append(combined[figure])
    for prefix, values in segments_by_prefix.items():
        if len(values) > 1:
            combined[f"{prefix}/{GAP}"] = max(values) - min(values)
    return combined
