"""Active learning: the queue shows first the pairs the reward model is least sure of."""

from __future__ import annotations

import math

import pytest

from alignkit.cli import main
from alignkit.web.annotate.active import preference_uncertainty, score_unscored_items
from alignkit.web.annotate.worker import AnnotateWorker, WorkerSettings


def test_uncertainty_is_the_distance_of_the_preference_probability_from_a_coin_flip():
    assert preference_uncertainty(1.3, 1.3) == 0.0
    assert preference_uncertainty(2.0, 0.0) == pytest.approx(1 / (1 + math.exp(-2)) - 0.5)
    assert preference_uncertainty(0.0, 2.0) == preference_uncertainty(2.0, 0.0)
    assert preference_uncertainty(50.0, 0.0) == pytest.approx(0.5)


def test_the_queue_orders_items_by_uncertainty_and_unscored_ones_last(store, project):
    uncertainties = {3: 0.30, 7: 0.01, 5: 0.12}
    store.set_rewards([(item, 0.0, 0.0, u) for item, u in uncertainties.items()])
    annotator = store.add_annotator("al", "hash-al").id
    order = []
    while (assignment := store.next_assignment(annotator)) is not None:
        order.append(assignment.item.id)
        store.skip(annotator, assignment.item.id)
    assert order[:3] == [7, 5, 3] and order[3:] == [1, 2, 4, 6, 8, 9, 10]


class _LengthScorer:
    """A stand-in reward model: the longer answer is better, by its length in characters."""

    def __call__(self, prompts, responses):
        import torch

        from alignkit.rewards.base import RewardOutput

        return RewardOutput(torch.tensor([float(len(r)) for r in responses]))


def test_scoring_stores_both_rewards_and_the_uncertainty(store, project):
    assert score_unscored_items(store, _LengthScorer(), limit=4) == 4
    assert score_unscored_items(store, _LengthScorer()) == 6
    assert score_unscored_items(store, _LengthScorer()) == 0
    row = store.read().execute("SELECT * FROM items WHERE id = 1").fetchone()
    assert row["reward_a"] == len(row["answer_a"]) and row["reward_b"] == len(row["answer_b"])
    assert row["uncertainty"] == pytest.approx(
        preference_uncertainty(row["reward_a"], row["reward_b"])
    )


def test_annotate_new_and_the_serve_worker_score_with_a_reward_model(
    tmp_path, capsys, store, db_path, write_pairs_file, make_pairs
):
    pairs = write_pairs_file(tmp_path / "pairs.jsonl", make_pairs(6))
    argv = ["annotate", "new", "--db", str(db_path), "--pairs", str(pairs)]
    assert main([*argv, "--reward-model", "tiny-random-llama"]) == 0
    assert "scored 6 pairs" in capsys.readouterr().out
    assert all(item.uncertainty is not None for item in store.items())
    # pairs added later are scored by serve's worker
    assert main(argv) == 0
    worker = AnnotateWorker(store, WorkerSettings(reward_model="tiny-random-llama"))
    assert worker.run_once() is True
    assert worker.run_once() is False  # nothing left to do
    scored = store.items()
    assert len(scored) == 12 and all(item.uncertainty is not None for item in scored)
    least_sure = min(scored, key=lambda item: item.uncertainty)
    annotator = store.add_annotator("first", "hash-first").id
    assert store.next_assignment(annotator).item.id == least_sure.id
