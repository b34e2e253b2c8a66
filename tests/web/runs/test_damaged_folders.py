"""Hostile and damaged run folders, over HTTP (issue 26, items 2–4): links inside a run
folder are not followed, odd paths are a 404 and never a 500, and one damaged folder
neither takes the listing down nor hides what is readable in it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alignkit.web import ServeSettings, create_app

GOOD_METRICS = '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def _run(folder: Path, metrics: str | bytes = GOOD_METRICS, config: str = "model: m\n") -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_bytes(
        metrics if isinstance(metrics, bytes) else metrics.encode()
    )
    (folder / "config.yaml").write_text(config)
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    runs = tmp_path / "runs"
    _run(runs / "good")
    return runs


@pytest.fixture
def client(root, tmp_path) -> TestClient:
    app = create_app(ServeSettings(db=tmp_path / "labels.db", runs_dir=root))
    return TestClient(app, raise_server_exceptions=False)


# ------------------------------------------------------------------ 2. links in checkpoints


def test_a_checkpoint_that_links_out_is_neither_sized_nor_listed(client, root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    (outside / "inner" / "secret-name.txt").write_text("s")
    checkpoints = root / "good" / "checkpoints"
    (checkpoints / "step-1").mkdir(parents=True)
    (checkpoints / "step-1" / "weights.bin").write_bytes(b"w" * 10)
    os.symlink(outside, checkpoints / "step-2")  # a whole checkpoint that is a link
    os.symlink(outside / "inner", checkpoints / "step-1" / "nested")  # a link inside one
    details = client.get("/api/runs/run", params={"id": "good"}).json()
    assert [(c["name"], c["bytes"]) for c in details["checkpoints"]] == [("step-1", 10)]
    assert "secret-name" not in json.dumps(details)


def test_a_checkpoints_folder_that_is_a_link_is_not_read(client, root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "step-7").mkdir(parents=True)
    os.symlink(outside, root / "good" / "checkpoints")
    details = client.get("/api/runs/run", params={"id": "good"}).json()
    assert details["checkpoints"] == []


# ------------------------------------------------------------------ 3. 4xx, never 500

RUN_ROUTES = [
    "/api/runs/run",
    "/api/runs/metrics",
    "/api/runs/rollouts",
    "/api/runs/rollout?index=0",
    "/api/runs/pairs",
    "/api/runs/pair?index=0",
    "/api/runs/pipeline",
    "/runs/report",
]


def _get(client: TestClient, route: str, run_id: str):
    path, _, query = route.partition("?")
    params = dict([query.split("=")]) if query else {}
    return client.get(path, params={"id": run_id, **params})


def test_a_symlink_loop_is_a_404_on_every_run_route(client, root):
    os.symlink(root / "loop-a", root / "loop-b")
    os.symlink(root / "loop-b", root / "loop-a")
    for route in RUN_ROUTES:
        for run_id in ("loop-a", "loop-a/x"):
            response = _get(client, route, run_id)
            assert response.status_code == 404, (route, run_id, response.text)
    assert client.get("/api/runs").status_code == 200


def test_a_name_too_long_for_the_file_system_is_a_404(client):
    for route in RUN_ROUTES:
        response = _get(client, route, "a" * 300)
        assert response.status_code == 404, (route, response.text)
        assert set(response.json()) == {"error"}
    assert client.get("/static/" + "b" * 300).status_code == 404


# ------------------------------------------------------------------ 4. damaged run folders

DAMAGE = {
    "not-json": ('{"step": 1, "loss": 0.5}\nnot json at all\n{"step": 3, "loss": 0.3}\n', 2),
    "bad-utf8": (b'{"step": 1, "loss": 0.5}\n{"step": 2, "note": "\xff\xfe"}\n', 1),
    "array-line": ('{"step": 1, "loss": 0.5}\n[1, 2, 3]\n', 1),
    "step-text": ('{"step": 1, "loss": 0.5}\n{"step": "three", "loss": 0.1}\n', 1),
    "half-line": ('{"step": 1, "loss": 0.5}\n{"step": 2, "lo', 1),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_metrics_file_keeps_the_listing_and_its_readable_lines(client, root, name):
    metrics, readable = DAMAGE[name]
    _run(root / name, metrics)
    listing = client.get("/api/runs")
    assert listing.status_code == 200
    by_id = {r["id"]: r for r in listing.json()["runs"]}
    assert set(by_id) == {"good", name}
    assert by_id["good"]["problems"] == []
    if name == "half-line":  # a run being written right now: not damage
        assert by_id[name]["problems"] == []
    else:
        assert by_id[name]["problems"] and "metrics.jsonl line 2" in by_id[name]["problems"][0]
    response = client.get("/api/runs/metrics", params={"id": name})
    assert response.status_code == 200
    body = response.json()
    assert len(body["records"]) == readable
    assert all(isinstance(r["step"], int) for r in body["records"])
    # polling again from `next` neither repeats nor skips a line
    again = client.get("/api/runs/metrics", params={"id": name, "since": body["next"]}).json()
    assert again["records"] == []


def test_a_half_written_last_line_is_read_once_it_is_finished(client, root):
    folder = _run(root / "writing", '{"step": 1}\n\n{"step": 2, "lo')
    first = client.get("/api/runs/metrics", params={"id": "writing"}).json()
    assert [r["step"] for r in first["records"]] == [1]
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('ss": 1}\n{"step": 3}\n')
    later = client.get("/api/runs/metrics", params={"id": "writing", "since": first["next"]})
    assert [r["step"] for r in later.json()["records"]] == [2, 3]


def test_bad_yaml_and_bad_events_are_problems_not_errors(client, root):
    folder = _run(root / "bad-config", config="model: [unclosed\n")
    (folder / "events.jsonl").write_text('{"event": "start", "step": 0}\n{oops\n"a string"\n')
    listing = client.get("/api/runs")
    assert listing.status_code == 200
    entry = {r["id"]: r for r in listing.json()["runs"]}["bad-config"]
    assert any("config.yaml" in p for p in entry["problems"])
    details = client.get("/api/runs/run", params={"id": "bad-config"})
    assert details.status_code == 200
    body = details.json()
    assert body["config"] == {}
    assert [e["event"] for e in body["events"]] == ["start"]
    assert any("events.jsonl line 2" in p for p in body["problems"])
    assert any("events.jsonl line 3" in p for p in body["problems"])


def test_a_config_that_is_not_a_mapping_is_a_problem(client, root):
    _run(root / "list-config", config="- a\n- b\n")
    body = client.get("/api/runs/run", params={"id": "list-config"}).json()
    assert body["config"] == {} and any("config.yaml" in p for p in body["problems"])


def test_rollouts_whose_tokens_are_not_objects_are_served_without_them(client, root):
    folder = _run(root / "rollouts", config="num_generations: 2\n")
    records = [
        {"iteration": 1, "prompt": "p", "response": "r", "tokens": ["a", 3]},
        {"iteration": 1, "prompt": "p", "response": "r", "tokens": "abc"},
        {"iteration": 2, "prompt": ["not", "messages"], "response": 5, "tokens": [{"kl": "x"}]},
    ]
    (folder / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    listing = client.get("/api/runs/rollouts", params={"id": "rollouts"})
    assert listing.status_code == 200, listing.text
    assert listing.json()["total"] == 3
    for index in range(3):
        detail = client.get("/api/runs/rollout", params={"id": "rollouts", "index": index})
        assert detail.status_code == 200, (index, detail.text)


def test_a_dpo_run_whose_dataset_is_gone_is_a_4xx_with_the_reason(client, root):
    missing = root / "data" / "gone.jsonl"
    _run(root / "dpo-gone", config=f"loss_type: sigmoid\nbeta: 0.1\ndataset: {missing}\n")
    response = client.get("/api/runs/pairs", params={"id": "dpo-gone"})
    assert 400 <= response.status_code < 500, response.text
    assert "gone.jsonl" in response.json()["error"]


def test_a_malformed_pipeline_summary_is_a_problem(client, root):
    pipe = root / "pipe"
    _run(pipe / "sft" / "run")
    (pipe / "summary.json").write_text("{not json")
    listing = client.get("/api/runs")
    assert listing.status_code == 200
    response = client.get("/api/runs/pipeline", params={"id": "pipe"})
    assert response.status_code == 200
    body = response.json()
    assert body["summary"] is None and "summary.json" in body["problems"][0]
