"""Text from run folders reaches the dashboard's charts as text (issue 26, item 1): a metric
name, a run id and an event message that hold Plotly's label markup are drawn as the
characters they are, with no live link and no bold; and a damaged run is listed, marked."""

from __future__ import annotations

import json

import pytest

from alignkit.web import ServeSettings, create_app

pytestmark = pytest.mark.browser

LINK = '<a href="https://evil.example/login">re-login here</a>'
BOLD_ID = "run-<b>bold"
MESSAGE = "<b>boom</b> <a href='https://evil.example'>click</a>"


@pytest.fixture
def server(live_server, tmp_path):
    root = tmp_path / "runs"
    folder = root / BOLD_ID
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: m\n")
    rows = [{"step": s, LINK: 0.1 * s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = [{"event": "guard", "step": 2, "message": MESSAGE}, {"event": "finished", "step": 3}]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    damaged = root / "damaged"
    damaged.mkdir()
    (damaged / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n')
    return live_server(create_app(ServeSettings(db=tmp_path / "labels.db", runs_dir=root)))


def test_chart_labels_from_a_run_folder_are_plain_text(page, server, screenshot):
    from urllib.parse import quote

    page.goto(f"{server.url}/runs?run={quote(BOLD_ID)}&overlay=damaged")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    chart = f".rn-chart[data-key='{LINK}']"
    page.wait_for_selector(f"{chart} .main-svg")
    page.wait_for_selector(".rn-chart[data-key='loss'] .legendtext")
    titles = page.eval_on_selector_all(".rn-chart .gtitle", "els => els.map(e => e.textContent)")
    assert LINK in titles
    legend = page.eval_on_selector_all(
        ".rn-chart[data-key='loss'] .legendtext", "els => els.map(e => e.textContent)"
    )
    assert BOLD_ID in legend
    # no link, no bold, anywhere in any chart
    assert page.eval_on_selector_all(".rn-chart svg a", "els => els.length") == 0
    bold = page.eval_on_selector_all(
        ".rn-chart text, .rn-chart tspan",
        "els => els.filter(e => getComputedStyle(e).fontWeight === '700').length",
    )
    assert bold == 0
    # the guard event's message, as hover text of its mark
    hover = page.evaluate(
        "key => [...document.querySelectorAll('.rn-chart')].find(d => d.dataset.key === key)"
        ".layout.annotations.map(a => a.hovertext)",
        LINK,
    )
    assert any("&lt;b&gt;boom" in h for h in hover)
    page.hover(f"{chart} .annotation")
    page.wait_for_selector(".hoverlayer .hovertext", timeout=5_000)
    shown = page.eval_on_selector_all(".hoverlayer .hovertext", "els => els[0].textContent")
    assert MESSAGE in shown
    # the damaged run is listed and marked
    item = page.locator(".rn-run-item[data-id='damaged'] .rn-damaged")
    assert item.count() == 1 and "metrics.jsonl line 2: not JSON" in item.get_attribute("title")
    screenshot(page, "runs-text-from-folders")
    assert page.js_errors == []
