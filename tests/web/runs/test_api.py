"""The runs API on real tiny-model run folders: listing, details, metrics since a line,
rollouts with per-token figures, DPO pairs scored on demand, and nothing outside --runs."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from alignkit.web import ServeSettings, create_app

GRPO = "pipe/grpo/run"
DPO = "pipe/dpo/run"


@pytest.fixture
def client(runs_root, tmp_path):
    app = create_app(ServeSettings(db=tmp_path / "labels.db", runs_dir=runs_root))
    return TestClient(app, raise_server_exceptions=False)


def test_lists_every_run_and_the_pipeline(client):
    listing = client.get("/api/runs").json()
    by_id = {r["id"]: r for r in listing["runs"]}
    assert set(by_id) == {GRPO, DPO, "grpo-copy"}
    assert by_id[GRPO]["kind"] == "grpo" and by_id[GRPO]["pipeline"] == "pipe"
    assert by_id[DPO]["kind"] == "dpo" and by_id[DPO]["status"] == "finished"
    assert by_id[GRPO]["steps"] == 3 and by_id["grpo-copy"]["pipeline"] is None
    assert listing["pipelines"] == [{"id": "pipe", "has_report": True}]


def test_run_details_hold_config_events_and_checkpoints(client):
    details = client.get("/api/runs/run", params={"id": GRPO}).json()
    assert details["config"]["num_generations"] == 2
    assert [e["event"] for e in details["events"]][-1] == "finished"
    assert [c["step"] for c in details["checkpoints"]] == [2, 3]
    assert details["has_rollouts"] and details["has_model"]


def test_metrics_come_from_a_line_on(client, runs_root):
    lines = (runs_root / GRPO / "metrics.jsonl").read_text().splitlines()
    whole = client.get("/api/runs/metrics", params={"id": GRPO}).json()
    assert len(whole["records"]) == len(lines) and whole["next"] == len(lines)
    assert whole["records"][0]["objective/scores"] is not None
    rest = client.get("/api/runs/metrics", params={"id": GRPO, "since": 2}).json()
    assert rest["records"] == whole["records"][2:]


def test_rollouts_carry_per_token_figures_and_the_same_prompt_over_steps(client):
    listing = client.get("/api/runs/rollouts", params={"id": GRPO}).json()
    assert listing["total"] >= 3
    assert {s["iteration"] for s in listing["samples"]} == {0, 1, 2}
    detail = client.get("/api/runs/rollout", params={"id": GRPO, "index": 0}).json()
    assert {"logp", "ref_logp", "kl", "entropy", "logratio"} <= set(detail["figures"])
    token = detail["tokens"][0]
    assert token["logratio"] == pytest.approx(token["logp"] - token["ref_logp"])
    assert detail["summary"]["score_parts"] and detail["group_scores"]
    assert all(s["prompt"] == detail["summary"]["prompt"] for s in detail["same_prompt"])
    assert client.get("/api/runs/rollout", params={"id": GRPO, "index": 999}).status_code == 404


def test_dpo_pairs_get_per_token_log_ratios_from_the_model_and_its_reference(client):
    pairs = client.get("/api/runs/pairs", params={"id": DPO}).json()["pairs"]
    assert [p["chosen"] for p in pairs][:2] == ["Paris.", "5."]
    scored = client.get("/api/runs/pair", params={"id": DPO, "index": 0}).json()
    for side in ("chosen", "rejected"):
        tokens = scored[side]["tokens"]
        assert tokens and all(t["logp"] < 0 and t["ref_logp"] < 0 for t in tokens)
        assert scored[side]["logratio"] == pytest.approx(sum(t["logratio"] for t in tokens))
    # three steps at lr 1e-3 moved the policy: the log-ratios are not all zero
    assert any(abs(t["logratio"]) > 1e-4 for t in scored["chosen"]["tokens"])
    margin = scored["chosen"]["logratio"] - scored["rejected"]["logratio"]
    assert scored["implicit_reward_margin"] == pytest.approx(scored["beta"] * margin)


def test_pipeline_summary_and_report(client):
    summary = client.get("/api/runs/pipeline", params={"id": "pipe"}).json()
    assert summary["summary"]["methods"]["grpo"]["win_rate"] == 0.5
    assert summary["stages"] == ["dpo", "grpo"]
    report = client.get("/runs/report", params={"id": "pipe"})
    assert report.status_code == 200 and "Pipeline report" in report.text


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "../",
        "../etc",
        "pipe/../..",
        "pipe/../../x",
        "/etc",
        "/tmp",
        "%2e%2e",
        "..\\x",
        "a\x00b",
    ],
)
def test_paths_outside_the_runs_folder_are_refused(client, bad):
    for url in ("/api/runs/run", "/api/runs/metrics", "/api/runs/rollouts", "/api/runs/pipeline"):
        response = client.get(url, params={"id": bad})
        assert response.status_code == 404, (url, bad)
        assert set(response.json()) == {"error"}
    assert client.get("/runs/report", params={"id": bad}).status_code == 404


def test_encoded_dot_dot_in_the_raw_query_is_refused(client):
    for raw in ("%2e%2e%2f", "%2E%2E/%2E%2E", "..%2f..%2fetc"):
        assert client.get(f"/api/runs/run?id={raw}").status_code == 404
        assert client.get(f"/runs/report?id={raw}").status_code == 404


def test_symlinks_pointing_out_are_not_followed(client, runs_root, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "metrics.jsonl").write_text('{"step": 1, "secret": 42}\n')
    (outside / "config.yaml").write_text("model: secret\n")
    link = runs_root / "link-out"
    if not link.exists():
        os.symlink(outside, link)
    (runs_root / "pipe" / "secret.html").write_text("x")
    try:
        assert "link-out" not in {r["id"] for r in client.get("/api/runs").json()["runs"]}
        assert client.get("/api/runs/run", params={"id": "link-out"}).status_code == 404
        assert client.get("/api/runs/metrics", params={"id": "link-out"}).status_code == 404
        # a file inside a real run folder that links out is not read either
        inner = runs_root / "grpo-copy" / "events.jsonl"
        saved = inner.read_text()
        inner.unlink()
        os.symlink(outside / "metrics.jsonl", inner)
        try:
            events = client.get("/api/runs/run", params={"id": "grpo-copy"}).json()["events"]
            assert events == []
        finally:
            inner.unlink()
            inner.write_text(saved)
    finally:
        link.unlink()
        (runs_root / "pipe" / "secret.html").unlink()


def test_a_dpo_run_whose_data_lies_outside_is_refused(client, runs_root, tmp_path):
    import shutil

    copy = runs_root / "dpo-outside"
    shutil.copytree(runs_root / DPO, copy)
    outside = tmp_path / "pairs.jsonl"
    outside.write_text((runs_root / "data" / "pairs.jsonl").read_text())
    config = (copy / "config.yaml").read_text()
    config = "\n".join(
        f"eval_dataset: {outside}" if line.startswith("eval_dataset:") else line
        for line in config.splitlines()
    )
    (copy / "config.yaml").write_text(config + "\n")
    try:
        response = client.get("/api/runs/pairs", params={"id": "dpo-outside"})
        assert response.status_code == 404 and "outside --runs" in response.json()["error"]
    finally:
        shutil.rmtree(copy)
