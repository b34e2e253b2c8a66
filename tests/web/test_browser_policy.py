"""Every page works under the app's Content-Security-Policy (issue 26, item 7): loaded in a
browser that enforces it, each page draws, works, and reports no violation; a run folder's
report opens sandboxed, its scripts running but cut off from the app's origin."""

from __future__ import annotations

import json

import pytest

from alignkit.web import ServeSettings, create_app

pytestmark = pytest.mark.browser


@pytest.fixture
def server(live_server, tmp_path):
    root = tmp_path / "runs"
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: m\n")
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipe = root / "pipe"
    pipe.mkdir()
    (pipe / "summary.json").write_text("{}")
    (pipe / "report.html").write_text(
        "<html><body><p id='out'>waiting</p><script>"
        "let origin = 'unreadable'; try { origin = String(sessionStorage.length); } catch (e) {}"
        "document.getElementById('out').textContent = 'ran; storage: ' + origin;"
        "</script></body></html>"
    )
    settings = ServeSettings(
        db=tmp_path / "labels.db", runs_dir=root, extra={"playground_model": "tiny-random-llama"}
    )
    return live_server(create_app(settings))


def test_each_page_runs_under_the_policy(strict_page, server):
    page = strict_page
    page.goto(f"{server.url}/")
    page.wait_for_selector(".cards")
    page.goto(f"{server.url}/annotate")
    page.wait_for_selector("#token")
    page.goto(f"{server.url}/playground")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    page.wait_for_selector("#chart-probs .main-svg")
    page.click("#step")
    page.wait_for_selector("#figures[data-step='1']", timeout=20_000)
    page.goto(f"{server.url}/runs?run=run")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.wait_for_selector(".rn-chart[data-key='loss'] .main-svg")
    assert page.js_errors == []


def test_a_run_folders_report_runs_sandboxed(strict_page, server):
    page = strict_page
    page.goto(f"{server.url}/runs/report?id=pipe")
    page.wait_for_selector("#out:text('ran')")
    assert page.inner_text("#out") == "ran; storage: unreadable"
