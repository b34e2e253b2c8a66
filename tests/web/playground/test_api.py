"""The playground's API: a step over HTTP is exact.step (which test_exact checks against
alignkit.ops), bad input is one line, the code panel's source is the library's, and the
real-model mode runs one DPO step on the tiny model."""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

from alignkit.ops.losses import dpo_loss, grpo_loss, ppo_policy_loss
from alignkit.web import ServeSettings, create_app
from alignkit.web.playground import exact


@pytest.fixture
def client(tmp_path):
    settings = ServeSettings(
        db=tmp_path / "labels.db",
        runs_dir=tmp_path / "runs",
        extra={"playground_model": "tiny-random-llama"},
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.mark.parametrize("method", ["dpo", "ppo", "grpo"])
def test_the_step_endpoint_equals_the_library_step(client, method):
    settings = {"method": method, "beta": 0.2, "learning_rate": 1.5, "seed": 4}
    first = client.post("/api/playground/step", json={"settings": settings}).json()["results"][0]
    expected = exact.step(exact.initial_state(), exact.Settings(**settings))
    assert first["state"]["logits"] == pytest.approx(expected.state.logits, abs=1e-12)
    assert first["metrics"]["gold"] == pytest.approx(expected.metrics["gold"])
    # the state it returned is the state the next request continues from
    body = {"settings": settings, "state": first["state"], "steps": 3}
    three = client.post("/api/playground/step", json=body).json()["results"]
    expected_three = exact.run(expected.state, exact.Settings(**settings), 3)
    assert [r["metrics"]["step"] for r in three] == [2, 3, 4]
    assert three[-1]["state"]["logits"] == pytest.approx(expected_three[-1].state.logits)


def test_world_lists_the_answers_with_their_rewards(client):
    world = client.get("/api/playground/world", params={"proxy_flaw": 0}).json()
    assert world["prompt"] == exact.PROMPT
    assert [a["key"] for a in world["answers"]] == [a.key for a in exact.ANSWERS]
    assert all(a["proxy"] == pytest.approx(a["gold"]) for a in world["answers"])
    assert sum(world["metrics"]["probs"]) == pytest.approx(1.0) and world["metrics"]["kl"] == 0


@pytest.mark.parametrize(
    "body,field",
    [
        ({"settings": {"beta": -1}}, "beta"),
        ({"settings": {"method": "sft"}}, "method"),
        ({"steps": 100000}, "steps"),
        ({"state": {"logits": [0, 1]}}, "logits"),
    ],
)
def test_bad_requests_are_one_line(client, body, field):
    response = client.post("/api/playground/step", json=body)
    assert response.status_code == 422
    assert set(response.json()) == {"error"} and field in response.json()["error"]
    assert "\n" not in response.json()["error"]


def test_the_code_endpoint_serves_the_library_source(client):
    for method, function in (("dpo", dpo_loss), ("ppo", ppo_policy_loss), ("grpo", grpo_loss)):
        functions = client.get("/api/playground/code", params={"method": method}).json()[
            "functions"
        ]
        sources = {f["name"]: f["source"] for f in functions}
        assert sources[function.__name__] == inspect.getsource(function)
        assert sources[f"{method}_step"] == inspect.getsource(getattr(exact, f"{method}_step"))
    assert client.get("/api/playground/code", params={"method": "x"}).status_code == 404


def test_the_page_has_controls_theory_and_mathml(client):
    html = client.get("/playground").text
    for control in (
        "beta",
        "learning_rate",
        "clip_eps",
        "adaptive_beta",
        "kl_target",
        "group_size",
        "label_noise",
        "proxy_flaw",
    ):
        assert f'id="{control}"' in html
    assert html.count("<math") >= 8 and "Interview questions" in html
    assert "/static/plotly.min.js" in html and "cdn" not in html.lower()


def test_real_model_mode_samples_a_pair_and_one_dpo_step_raises_the_margin(client):
    prompt = "What is the capital of France?"
    pair = client.post("/api/playground/real/sample", json={"prompt": prompt}).json()
    assert len(pair["answers"]) == 2
    chosen, rejected = "Paris is the capital.", "I cannot answer that."
    body = {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "beta": 0.1,
        "learning_rate": 0.01,
    }
    step = client.post("/api/playground/real/prefer", json=body).json()
    before = step["before"]["chosen"] - step["before"]["rejected"]
    after = step["after"]["chosen"] - step["after"]["rejected"]
    assert after > before
    # the first step starts at the reference: the adapter is zero-initialised
    assert step["before"]["chosen"] == pytest.approx(step["reference"]["chosen"], abs=1e-4)
    assert step["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert client.get("/api/playground/real/status").json() == {
        "model": "tiny-random-llama",
        "loaded": True,
        "steps": 1,
    }
    same = client.post("/api/playground/real/prefer", json=body | {"rejected": chosen})
    assert same.status_code == 422


@pytest.mark.parametrize(
    "body,field",
    [
        ({"settings": {"seed": 2**64}}, "seed"),
        ({"settings": {"seed": -1}}, "seed"),
        ({"state": {"logits": [0] * 6, "step": 2**63}}, "step"),
        ({"settings": {"kl_horizon": 2**70}}, "kl_horizon"),
        ({"settings": {"batch_size": 10**12}}, "batch_size"),
        ({"settings": {"group_size": 10**9}}, "group_size"),
        ({"settings": {"ppo_epochs": 10**9}}, "ppo_epochs"),
    ],
)
def test_integers_out_of_range_are_a_422_not_a_500(client, body, field):
    response = client.post("/api/playground/step", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]


def test_a_learning_rate_past_the_methods_range_is_a_422(client):
    body = {"settings": {"method": "ppo", "learning_rate": 20}}
    response = client.post("/api/playground/step", json=body)
    assert response.status_code == 422 and "learning_rate for ppo" in response.json()["error"]


def test_a_diverging_run_returns_its_finite_steps_and_says_so(client, monkeypatch):
    monkeypatch.setitem(exact.LEARNING_RATES, "ppo", (0.05, 50.0))  # let it diverge
    body = {"settings": {"method": "ppo", "learning_rate": 20}, "steps": 300}
    response = client.post("/api/playground/step", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert "diverged at step" in data["diverged"]
    assert 0 < len(data["results"]) < 300
    again = client.post("/api/playground/step", json=body | {"state": data["results"][-1]["state"]})
    assert again.status_code == 200 and again.json()["diverged"]
