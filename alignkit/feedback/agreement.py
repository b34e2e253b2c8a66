"""How far annotators agree, and which of them to trust.

* Cohen's kappa for two annotators: κ = (p_o − p_e) / (1 − p_e) over the items both labelled
  (Cohen 1960).
* Fleiss' kappa over all: κ = (P̄ − P̄_e) / (1 − P̄_e), P_i = (Σ_j n_ij² − n_i) / (n_i(n_i − 1)),
  p_j = Σ_i n_ij / Σ_i n_i (Fleiss 1971; with n_i raters on item i, which for a constant n
  is Fleiss' own formula). Items with fewer than two labels are left out.
* Krippendorff's alpha, nominal: α = 1 − (n − 1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k from the
  coincidence matrix o (Krippendorff 2011), which allows any number of labels per item.
* Per annotator: agreement with the majority of the *others* on the same items; how often
  they pick the answer shown on the left (with left/right randomised, an unbiased annotator
  picks it half the time: a z-score against ½ says how sure the difference is); and which
  way their disagreements with that majority lean — toward the left answer, toward the
  longer one. A bias shows in the disagreements.

All by hand, no library: the formulas are short, and the tests check them against the
published examples (Fleiss' 0.210, Krippendorff's 0.743).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alignkit.feedback.labels import Label


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """κ of two annotators' labels on the same items (1 = always agree, 0 = chance)."""
    if len(first) != len(second) or not first:
        raise ValueError("Cohen's kappa needs the same, non-empty list of items from both")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    count_a, count_b = Counter(first), Counter(second)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: Sequence[Mapping[str, int]]) -> float:
    """κ from per-item category counts ({category: raters who chose it}, one per item)."""
    rows = [c for c in counts if sum(c.values()) >= 2]
    if not rows:
        raise ValueError("Fleiss' kappa needs items with at least two labels")
    totals: Counter[str] = Counter()
    agreement = 0.0
    for row in rows:
        n_i = sum(row.values())
        agreement += (sum(v * v for v in row.values()) - n_i) / (n_i * (n_i - 1))
        totals.update(row)
    p_bar = agreement / len(rows)
    all_labels = sum(totals.values())
    p_e = sum((v / all_labels) ** 2 for v in totals.values())
    if p_e == 1.0:
        return 1.0 if p_bar == 1.0 else 0.0
    return (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha(units: Sequence[Sequence[str]]) -> float:
    """Nominal α from each item's labels (any number per item; items with one are ignored)."""
    coincidences: Counter[tuple[str, str]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidences[(values[i], values[j])] += 1 / (m - 1)
    n_c: Counter[str] = Counter()
    for (c, _), v in coincidences.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n == 0:
        raise ValueError("Krippendorff's alpha needs items with at least two labels")
    disagreement = sum(v for (c, k), v in coincidences.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if expected == 0:
        return 1.0
    return 1 - (n - 1) * disagreement / expected


@dataclass
class AnnotatorReport:
    """What the labels say about one annotator."""

    annotator: str
    labels: int
    agreement: float | None  # with the others' majority, over items that have one
    left_rate: float | None  # share of picks (a or b) that took the left answer
    left_z: float | None  # (left_rate − ½)·√n / ½
    disagreements: int = 0  # picks that differ from the others' majority pick
    disagreements_left: float | None = None  # share of those that took the left answer
    disagreements_longer: float | None = None  # share of those that took the longer answer
    flags: list[str] = field(default_factory=list)


def _majority(choices: Sequence[str]) -> str | None:
    """The most common choice when it is strictly the most common; None on a tie."""
    if not choices:
        return None
    (top, count), *rest = Counter(choices).most_common()
    return None if rest and rest[0][1] == count else top


def annotator_reports(
    labels: Sequence[Label],
    *,
    lengths: Mapping[str, tuple[int, int]] | None = None,
    min_agreement: float = 0.7,
    max_left_z: float = 3.0,
    max_lean: float = 0.75,
    min_disagreements: int = 8,
) -> dict[str, AnnotatorReport]:
    """Per annotator, agreement and biases, with a flag for each threshold crossed:

    - agreement with the others' majority below `min_agreement` (trained labellers agreed
      with each other about 73% of the time in InstructGPT, Ouyang et al. 2022);
    - left picks with |z| above `max_left_z` (left/right must have been randomised);
    - of at least `min_disagreements` disagreements, more than `max_lean` toward the left
      answer, or toward the longer one (`lengths`: item → (length of a, length of b)).
    """
    by_item: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item].append(label)
    reports: dict[str, AnnotatorReport] = {}
    for annotator in sorted({label.annotator for label in labels}):
        mine = [label for label in labels if label.annotator == annotator]
        agree = compared = 0
        lean_left: list[bool] = []
        lean_longer: list[bool] = []
        for label in mine:
            others = [o.choice for o in by_item[label.item] if o.annotator != annotator]
            majority = _majority(others)
            if majority is None:
                continue
            compared += 1
            agree += label.choice == majority
            if label.choice in ("a", "b") and majority in ("a", "b") and label.choice != majority:
                lean_left.append(bool(label.picked_left))
                if lengths is not None and label.item in lengths:
                    len_a, len_b = lengths[label.item]
                    if len_a != len_b:
                        lean_longer.append((label.choice == "a") == (len_a > len_b))
        picks = [label.picked_left for label in mine if label.picked_left is not None]
        left_rate = sum(picks) / len(picks) if picks else None
        left_z = (left_rate - 0.5) * math.sqrt(len(picks)) / 0.5 if picks else None
        report = AnnotatorReport(
            annotator=annotator,
            labels=len(mine),
            agreement=agree / compared if compared else None,
            left_rate=left_rate,
            left_z=left_z,
            disagreements=len(lean_left),
            disagreements_left=sum(lean_left) / len(lean_left) if lean_left else None,
            disagreements_longer=sum(lean_longer) / len(lean_longer) if lean_longer else None,
        )
        if report.agreement is not None and report.agreement < min_agreement:
            report.flags.append(f"agrees with the others' majority {report.agreement:.0%}")
        if left_z is not None and abs(left_z) > max_left_z:
            report.flags.append(f"picks the left answer {left_rate:.0%} (z = {left_z:+.1f})")
        if len(lean_left) >= min_disagreements and report.disagreements_left > max_lean:
            report.flags.append(
                f"{report.disagreements_left:.0%} of their disagreements pick the left answer"
            )
        if len(lean_longer) >= min_disagreements and report.disagreements_longer > max_lean:
            report.flags.append(
                f"{report.disagreements_longer:.0%} of their disagreements pick the longer answer"
            )
        reports[annotator] = report
    return reports


def agreement_summary(labels: Sequence[Label], **report_options) -> dict:
    """Every agreement figure of a set of labels, JSON-ready: Fleiss' kappa and
    Krippendorff's alpha over all, Cohen's kappa for each pair of annotators (over the
    items both labelled, when there are at least 5), and each annotator's report."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for label in labels:
        by_item[label.item][label.annotator] = label.choice
    units = [list(v.values()) for v in by_item.values()]
    annotators = sorted({label.annotator for label in labels})
    pairs = {}
    for a, b in itertools.combinations(annotators, 2):
        shared = [item for item, v in by_item.items() if a in v and b in v]
        if len(shared) >= 5:
            pairs[f"{a}|{b}"] = cohen_kappa(
                [by_item[i][a] for i in shared], [by_item[i][b] for i in shared]
            )
    multi = [u for u in units if len(u) >= 2]
    reports = annotator_reports(labels, **report_options)
    return {
        "labels": len(labels),
        "items": len(by_item),
        "fleiss_kappa": fleiss_kappa([Counter(u) for u in multi]) if multi else None,
        "krippendorff_alpha": krippendorff_alpha(multi) if multi else None,
        "cohen_kappa": pairs,
        "annotators": {name: vars(r) for name, r in reports.items()},
        "flagged": [name for name, r in reports.items() if r.flags],
    }
