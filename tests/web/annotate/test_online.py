"""The loop closed: consensus labels → DPO steps on a LoRA policy → new pairs from it."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from alignkit.models import apply_lora
from alignkit.models.tiny import tiny_random_llama
from alignkit.web import ServeSettings, create_app
from alignkit.web.annotate.online import OnlineDPOLearner, OnlineDPOSettings, TrainingPair
from alignkit.web.annotate.projects import new_prompts_project
from alignkit.web.annotate.sampling import PairSampling
from alignkit.web.annotate.worker import WorkerSettings
from alignkit.web.auth import create_annotator


def test_the_learner_moves_each_trained_pair_toward_its_chosen_answer():
    model, tokenizer = tiny_random_llama(seed=0)
    policy = apply_lora(model, r=4, alpha=8)
    learner = OnlineDPOLearner(
        policy, tokenizer, OnlineDPOSettings(steps=6, learning_rate=5e-3, batch_size=2)
    )
    pairs = [
        TrainingPair(1, "2 + 2 =", " 4", " 5", "a"),
        TrainingPair(2, [{"role": "user", "content": "Capital of France?"}], "Paris", "Rome", "b"),
        TrainingPair(3, "Say yes:", " yes", " no", "a"),
    ]
    result = learner.update(pairs)
    assert result["steps"] == 12  # 6 passes × 2 batches
    assert result["loss_after"] < result["loss_before"]
    for item_id, _side, before, after in result["moves"]:
        assert after > before, (item_id, before, after)
    assert [move[:2] for move in result["moves"]] == [(1, "a"), (2, "b"), (3, "a")]


def _wait(condition, timeout: float = 120.0, what: str = "the worker"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_samples_learns_from_consensus_and_samples_from_the_updated_policy(
    store, db_path, tmp_path
):
    prompts = [(f"Question {i}: say something.", None) for i in range(3)]
    new_prompts_project(store, prompts, model="tiny-random-llama", overlap=2, name="loop")
    tokens = [create_annotator(store, name) for name in ("u1", "u2")]
    worker = WorkerSettings(
        model="tiny-random-llama",
        online_dpo=OnlineDPOSettings(every=2, steps=2, learning_rate=1e-3, batch_size=2),
        sampling=PairSampling(max_new_tokens=8, batch_size=3),
        runs_dir=tmp_path / "runs",
        poll_s=0.05,
    )
    settings = ServeSettings(db=db_path, runs_dir=tmp_path / "runs", extra={"annotate": worker})
    with TestClient(create_app(settings)) as client:
        headers = [{"Authorization": f"Bearer {token}"} for token in tokens]
        # the background worker samples the three prompts' pairs
        _wait(lambda: store.sampling_progress()["sampled"] == 3, what="sampling")
        first = client.get("/api/annotate/next", headers=headers[0]).json()
        assert first["worker"]["online_dpo"] and first["worker"]["pairs_until_update"] == 2
        labelled = []
        for _ in range(2):  # both annotators pick the left answer of the same two items
            for index, header in enumerate(headers):
                item = client.get("/api/annotate/next", headers=header).json()["item"]
                body = {"client_id": f"u{index}-{item['id']:06d}", "item_id": item["id"]}
                picked = "left" if index == 0 else _same_answer(store, item, labelled)
                response = client.post(
                    "/api/annotate/labels", json=body | {"pick": picked}, headers=header
                )
                assert response.status_code == 201
                if index == 0:
                    labelled.append((item["id"], item["left"]))
        # two consensus pairs: one DPO update, and how each pair's margin moved
        move = _wait(
            lambda: client.get(
                f"/api/annotate/learning?item_id={labelled[0][0]}", headers=headers[0]
            ).json()["move"],
            what="the DPO update",
        )
        assert move["version"] == 1 and move["after"] > move["before"]
        [update] = store.policy_updates()
        assert update["pairs"] == 2 and update["steps"] == 2
        assert (
            tmp_path / "runs" / "annotate-online" / "policy-v1" / "adapter_config.json"
        ).is_file()
        # one new pair for each trained prompt, sampled from the updated policy
        _wait(lambda: store.sampling_progress()["sampled"] == 5, what="new pairs")
        newest = store.items()[-2:]
        assert {item.policy_version for item in newest} == {1}
        status = client.get("/api/annotate/next", headers=headers[0]).json()["worker"]
        assert status["policy_version"] == 1 and status["error"] is None


def _same_answer(store, shown: dict, labelled: list[tuple[int, str]]) -> str:
    """The side on which this annotator sees the answer the first annotator picked."""
    picked_text = dict(labelled)[shown["id"]]
    return "left" if shown["left"] == picked_text else "right"
