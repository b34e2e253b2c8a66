"""The statistics of the labels in a store: agreement, biases, speed, flags.

The agreement figures are alignkit.feedback's (``agreement_summary``: Cohen's kappa per
pair of annotators, Fleiss' kappa and Krippendorff's alpha over all, each annotator's
agreement with the others' majority and their left-pick rate with its z-score, and the
flags); this module only feeds it the stored labels, with the answer lengths so that a
length bias shows, and adds what only the store knows: speed and progress.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from alignkit.feedback.agreement import agreement_summary
from alignkit.web.store import Store

DEFAULT_MIN_AGREEMENT = 0.7


def label_stats(store: Store, *, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> dict[str, Any]:
    """Every figure of the stats page and ``annotate stats``, JSON-ready."""
    labels = store.labels()
    items = store.items()
    lengths = {str(item.id): (len(item.answer_a), len(item.answer_b)) for item in items}
    summary = agreement_summary(
        [label.as_feedback_label() for label in labels],
        lengths=lengths,
        min_agreement=min_agreement,
    )
    times: dict[str, list[float]] = defaultdict(list)
    choices: dict[str, Counter] = defaultdict(Counter)
    for label in labels:
        choices[label.annotator][label.choice] += 1
        if label.time_on_item is not None:
            times[label.annotator].append(label.time_on_item)
    for name, report in summary["annotators"].items():
        report["median_seconds"] = statistics.median(times[name]) if times[name] else None
        report["choices"] = dict(choices[name])
    overlap = {project["id"]: project["overlap"] for project in store.projects()}
    per_item = Counter(label.item_id for label in labels)
    complete = sum(1 for item in items if per_item[item.id] >= overlap[item.project_id])
    summary.update(
        items_total=len(items),
        items_complete=complete,
        annotator_accounts=len(store.annotators()),
        min_agreement=min_agreement,
        choices=dict(Counter(label.choice for label in labels)),
    )
    return summary
