"""Labels → preference pairs in alignkit's own format, plus the agreement figures.

Each row is ``prompt``/``chosen``/``rejected`` (``alignkit/data/records.py``; message-list
prompts get message-list answers), with ``annotator`` (who voted for the chosen answer,
joined with '+') and ``group`` (the prompt's group, when it has one). The rule:

- ``majority`` (default): one row per item with a strict majority for a or b among the
  item's labels (``alignkit.feedback.consensus``), from items with at least
  ``min_labels`` labels; ``each``: one row per a/b label (every annotator's own pair).
- flagged annotators (``annotator_reports``' flags) are left out unless ``keep_flagged``.
- ``ties="vote"``: tie and both-bad labels count as votes, so an item where they win or
  split the vote has no majority and no row; ``ties="drop"``: they are left out before
  the vote. Either way a tie never becomes a pair.

Beside the JSONL a sidecar ``<name>.agreement.json`` holds the rule, the counts of what
was left out and why, and every agreement figure.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from alignkit.feedback.consensus import consensus
from alignkit.web.annotate.stats import DEFAULT_MIN_AGREEMENT, label_stats
from alignkit.web.store import Item, Store, StoredLabel


@dataclass(frozen=True)
class ExportRule:
    rule: Literal["majority", "each"] = "majority"
    ties: Literal["vote", "drop"] = "vote"
    keep_flagged: bool = False
    min_labels: int = 1
    min_agreement: float = DEFAULT_MIN_AGREEMENT


def _answer(prompt, text: str):
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _row(item: Item, side: str, voters: list[str]) -> dict[str, Any]:
    chosen, rejected = (
        (item.answer_a, item.answer_b) if side == "a" else (item.answer_b, item.answer_a)
    )
    row = {
        "prompt": item.prompt,
        "chosen": _answer(item.prompt, chosen),
        "rejected": _answer(item.prompt, rejected),
        "annotator": "+".join(sorted(voters)),
    }
    if item.group is not None:
        row["group"] = item.group
    return row


def export_rows(store: Store, rule: ExportRule) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pairs and the sidecar's content."""
    stats = label_stats(store, min_agreement=rule.min_agreement)
    dropped = [] if rule.keep_flagged else list(stats["flagged"])
    labels = [label for label in store.labels() if label.annotator not in dropped]
    counted = [l for l in labels if rule.ties == "vote" or l.choice in ("a", "b")]  # noqa: E741
    by_item: dict[int, list[StoredLabel]] = defaultdict(list)
    for label in counted:
        by_item[label.item_id].append(label)
    items = {item.id: item for item in store.items()}
    rows: list[dict[str, Any]] = []
    left_out = {"too_few_labels": 0, "no_majority": 0, "tie_or_both_bad_labels": 0}
    if rule.rule == "each":
        for label in labels:
            if label.choice in ("a", "b"):
                rows.append(_row(items[label.item_id], label.choice, [label.annotator]))
            else:
                left_out["tie_or_both_bad_labels"] += 1
    else:
        decided = consensus([label.as_feedback_label() for label in counted])
        for item_id, item_labels in sorted(by_item.items()):
            if len(item_labels) < rule.min_labels:
                left_out["too_few_labels"] += 1
                continue
            side = decided.get(str(item_id))
            if side is None:
                left_out["no_majority"] += 1
                continue
            voters = [label.annotator for label in item_labels if label.choice == side]
            rows.append(_row(items[item_id], side, voters))
        left_out["tie_or_both_bad_labels"] = sum(l.choice not in ("a", "b") for l in labels)  # noqa: E741
    sidecar = {
        "rule": asdict(rule),
        "rows": len(rows),
        "labels_used": len(labels),
        "dropped_annotators": dropped,
        "left_out": left_out,
        "agreement": stats,
    }
    return rows, sidecar


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.stem + ".agreement.json")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def export_to_files(store: Store, out: Path, rule: ExportRule) -> dict[str, Any]:
    """Write ``out`` (JSONL) and its sidecar, each atomically; returns the sidecar."""
    rows, sidecar = export_rows(store, rule)
    _write_atomically(out, to_jsonl(rows))
    _write_atomically(sidecar_path(out), json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return sidecar
