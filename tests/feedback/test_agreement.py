"""Agreement statistics against their published examples, and bias detection on a
simulated panel with known flaws."""

import random
from collections import Counter

import pytest

from alignkit.feedback.agreement import (
    agreement_summary,
    annotator_reports,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
)
from alignkit.feedback.consensus import consensus
from alignkit.feedback.labels import Label
from alignkit.feedback.simulated import DEFAULT_PANEL, PairItem, simulate_labels


def test_cohen_kappa_hand_computed():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = 0.4
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_fleiss_kappa_matches_fleiss_published_example():
    # The 10 subjects × 14 raters × 5 categories example (Fleiss 1971; Wikipedia): κ = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    counts = [{str(j): n for j, n in enumerate(row) if n} for row in table]
    assert fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-5)


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers,
    # 12 units, missing values; nominal α = 0.743
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[str(v) for v in unit if v is not None] for unit in zip(*observers, strict=True)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == 1.0


def test_agreement_with_the_others_majority_and_position():
    labels = [
        Label("1", "x", "a", left="a"),
        Label("1", "y", "a", left="b"),
        Label("1", "z", "b", left="b"),
        Label("2", "x", "b", left="b"),
        Label("2", "y", "b", left="a"),
        Label("2", "z", "b", left="b"),
    ]
    reports = annotator_reports(labels)
    # z: item 1 others say a (x, y) → disagrees; item 2 others say b → agrees
    assert reports["z"].agreement == 0.5 and reports["z"].left_rate == 1.0
    assert reports["x"].agreement == 1.0
    assert reports["z"].disagreements == 1 and reports["z"].disagreements_left == 1.0


def panel_labels(seed):
    rng = random.Random(seed + 10)
    pairs = [
        PairItem(f"i{i}", rng.random(), rng.random(), rng.randint(5, 60), rng.randint(5, 60))
        for i in range(300)
    ]
    return pairs, simulate_labels(pairs, DEFAULT_PANEL, overlap=3, seed=seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_flawed_simulated_annotators_are_flagged_and_the_careful_ones_are_not(seed):
    pairs, labels = panel_labels(seed)
    summary = agreement_summary(labels, lengths={p.item: (p.length_a, p.length_b) for p in pairs})
    assert sorted(summary["flagged"]) == ["left-biased", "length-lover", "noisy"]
    reports = summary["annotators"]
    assert any("left" in flag for flag in reports["left-biased"]["flags"])
    assert any("longer" in flag for flag in reports["length-lover"]["flags"])
    assert reports["careful-1"]["agreement"] > 0.8 and not reports["careful-1"]["flags"]
    assert 0 < summary["fleiss_kappa"] < 1 and 0 < summary["krippendorff_alpha"] < 1
    assert len(summary["cohen_kappa"]) == 10  # every pair of the 5 shares items
    assert Counter(label.item for label in labels) == Counter({p.item: 3 for p in pairs})


def test_consensus_is_the_strict_majority_without_the_dropped_annotators():
    labels = [
        Label("1", "x", "a"),
        Label("1", "y", "a"),
        Label("1", "bad", "b"),
        Label("2", "x", "a"),
        Label("2", "y", "b"),
        Label("2", "bad", "b"),
        Label("3", "x", "tie"),
        Label("3", "y", "tie"),
    ]
    assert consensus(labels) == {"1": "a", "2": "b"}
    assert consensus(labels, drop={"bad"}) == {"1": "a"}  # item 2 is split 1–1


def test_dropping_the_flagged_annotators_makes_the_consensus_truer():
    pairs, labels = panel_labels(0)
    truth = {p.item: "a" if p.gold_a > p.gold_b else "b" for p in pairs}
    flagged = agreement_summary(labels)["flagged"]

    def accuracy(decided):
        return sum(truth[i] == c for i, c in decided.items()) / len(decided)

    assert accuracy(consensus(labels, drop=flagged)) > accuracy(consensus(labels))
