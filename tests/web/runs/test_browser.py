"""The runs dashboard in headless Chromium on real tiny-model runs: charts drawn from
metrics.jsonl, two runs overlaid, the inspector's coloured tokens, DPO pairs side by side,
the pipeline's report, and `../` refused."""

from __future__ import annotations

import json

import pytest

from alignkit.web import ServeSettings, create_app

pytestmark = pytest.mark.browser
GRPO = "pipe/grpo/run"


@pytest.fixture
def server(live_server, runs_root, tmp_path):
    return live_server(create_app(ServeSettings(db=tmp_path / "labels.db", runs_dir=runs_root)))


def open_runs(page, server, query=""):
    page.goto(f"{server.url}/runs{query}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def test_charts_are_drawn_from_the_runs_metrics(page, server, runs_root, screenshot):
    open_runs(page, server, f"?run={GRPO}")
    page.wait_for_selector(".rn-chart[data-key='objective/scores'] .main-svg")
    drawn = page.evaluate(
        "document.querySelector(\".rn-chart[data-key='objective/scores']\").data[0]"
    )
    rows = [
        json.loads(line) for line in (runs_root / GRPO / "metrics.jsonl").read_text().splitlines()
    ]
    rows = [r for r in rows if "objective/scores" in r]
    assert drawn["x"] == [r["step"] for r in rows]
    assert drawn["y"] == pytest.approx([r["objective/scores"] for r in rows])
    assert int(page.get_attribute("#charts", "data-charts")) >= 6
    # checkpoints are marked on the charts
    shapes = page.evaluate(
        "document.querySelector(\".rn-chart[data-key='objective/scores']\").layout.shapes"
    )
    assert {s["x0"] for s in shapes} >= {2, 3}
    # a second run overlaid on the same charts
    page.check(".rn-run-item[data-id='grpo-copy'] input")
    page.wait_for_function(
        "document.querySelector(\".rn-chart[data-key='objective/scores']\").data.length == 2"
    )
    assert "overlay=grpo-copy" in page.url
    screenshot(page, "runs-charts")
    assert page.js_errors == []


def test_the_inspector_colours_each_token(page, server, screenshot):
    open_runs(page, server, f"?run={GRPO}&tab=inspector")
    page.wait_for_selector("#tokens .rn-token")
    colours = page.eval_on_selector_all(
        "#tokens .rn-token", "els => els.map(e => e.style.background)"
    )
    assert colours and any(c not in ("", "transparent") for c in colours)
    assert page.locator("#colour-by button").count() >= 4
    page.click("#colour-by button:text-is('entropy')")
    entropy = page.eval_on_selector_all(
        "#tokens .rn-token", "els => els.map(e => Number(e.dataset.value))"
    )
    assert all(v > 0 for v in entropy)
    page.hover("#tokens .rn-token >> nth=0")
    assert "entropy" in page.inner_text("#token-tip")
    page.select_option("#sample-sort", "kl")
    kls = page.eval_on_selector_all(
        ".rn-sample-item .rn-sample-top span:nth-child(3)",
        "els => els.map(e => Number(e.textContent.split(' ')[1]))",
    )
    assert kls == sorted(kls, reverse=True)
    assert page.locator("#same-prompt li").count() >= 1
    assert page.locator("#score-parts tr").count() >= 2
    screenshot(page, "runs-inspector")
    assert page.js_errors == []


def test_dpo_pairs_side_by_side_and_the_pipeline_report(page, server, screenshot):
    open_runs(page, server, "?run=pipe/dpo/run&tab=inspector")
    page.wait_for_selector("#chosen-tokens .rn-token", timeout=30_000)
    assert page.locator("#rejected-tokens .rn-token").count() >= 1
    assert "β·margin" in page.inner_text("#pair-status")
    screenshot(page, "runs-dpo-pair")
    page.click(".rn-pipeline-head a")
    page.wait_for_selector("#rn-pipeline:not([hidden])")
    assert "win_rate" in page.inner_text("#pipeline-summary")
    href = page.get_attribute("#pipeline-report", "href")
    page.goto(server.url + href)
    assert page.inner_text("h1") == "Pipeline report"
    assert page.js_errors == []


def test_dot_dot_paths_are_refused(page, server, screenshot):
    for bad in ("../", "..%2F..%2Fetc", "%2e%2e", "/etc"):
        response = page.goto(f"{server.url}/api/runs/run?id={bad}")
        assert response.status == 404
        assert set(json.loads(page.inner_text("body"))) == {"error"}
    response = page.goto(f"{server.url}/runs/report?id=../../")
    assert response.status == 404
    screenshot(page, "runs-refused")
    open_runs(page, server, "?run=../")  # the page ignores a run it does not list
    assert page.inner_text("#rn-title") != "../"
    assert page.js_errors == []
