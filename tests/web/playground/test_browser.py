"""The playground in headless Chromium: it animates stage by stage, β changes the outcome
of the same number of steps, the hacking scenario shows gold falling at a small β, the
code panel shows the source of what runs, the real-model mode and the reading."""

from __future__ import annotations

import inspect

import pytest

from alignkit.ops.losses import dpo_loss
from alignkit.web import ServeSettings, create_app
from alignkit.web.playground import exact

pytestmark = pytest.mark.browser


@pytest.fixture
def server(live_server, tmp_path):
    settings = ServeSettings(
        db=tmp_path / "labels.db",
        runs_dir=tmp_path,
        extra={"playground_model": "tiny-random-llama"},
    )
    return live_server(create_app(settings))


def open_playground(page, server, query=""):
    page.goto(f"{server.url}/playground{query}")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)


def figures(page) -> dict:
    return page.eval_on_selector(
        "#figures",
        "el => ({step: Number(el.dataset.step), gold: Number(el.dataset.gold), proxy: Number(el.dataset.proxy)})",
    )


def padded_probability(page) -> float:
    return float(page.get_attribute(".pg-answer[data-key=padded]", "data-prob"))


def run_steps(page, until: int) -> None:
    page.click("#skip")
    page.wait_for_function(f"document.getElementById('figures').dataset.step == '{until}'")


def set_slider(page, name: str, value: float) -> None:
    page.eval_on_selector(
        f"#{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value
    )


def test_the_loop_animates_stage_by_stage(page, server, screenshot):
    open_playground(page, server, "?speed=slow")
    assert page.inner_text("#prompt") == exact.PROMPT
    page.click("#step")
    page.wait_for_selector(".pg-stage.active[data-stage=answers]")
    assert page.locator(".pg-answer.sampled").count() >= 1
    page.wait_for_selector(".pg-stage.active[data-stage=preference]")
    assert page.locator(".pg-answer.chosen").count() >= 1
    screenshot(page, "playground-animating")
    page.wait_for_selector(".pg-stage.active[data-stage=update]")
    page.wait_for_function("document.getElementById('figures').dataset.step == '1'")
    page.wait_for_selector(".pg-stage.active[data-stage=shift]")
    # play runs steps on its own; pause stops it
    page.select_option("#speed", "turbo")
    page.click("#play")
    page.wait_for_function("Number(document.getElementById('figures').dataset.step) >= 11")
    page.click("#play")
    assert page.inner_text("#play").strip().endswith("Play")
    assert page.js_errors == []


def test_a_change_of_beta_changes_the_outcome_of_the_same_steps(page, server, screenshot):
    open_playground(page, server, "?beta=0.05")
    run_steps(page, 50)
    small = figures(page) | {"padded": padded_probability(page)}
    set_slider(page, "beta", 1.0)
    assert "beta=1" in page.url  # the URL carries the setting
    page.click("#reset")
    page.wait_for_function("document.getElementById('figures').dataset.step == '0'")
    run_steps(page, 50)
    large = figures(page) | {"padded": padded_probability(page)}
    screenshot(page, "playground-large-beta")
    assert small["padded"] > 0.8 > large["padded"]
    assert large["gold"] > small["gold"] + 0.3
    # and the browser's numbers are the library's, step for step
    expected = exact.run(exact.initial_state(), exact.Settings(beta=1.0), 50)[-1].metrics
    assert large["gold"] == pytest.approx(expected["gold"], abs=1e-9)
    assert page.js_errors == []


def test_the_hacking_scenario_shows_gold_falling_at_small_beta(page, server, screenshot):
    open_playground(page, server, "?beta=0.05&method=ppo")
    start = figures(page)
    run_steps(page, 50)
    run_steps(page, 100)
    end = figures(page)
    assert end["proxy"] > start["proxy"] + 1.0
    assert end["gold"] < start["gold"] - 0.2
    gold_trace = page.evaluate("document.getElementById('chart-rewards').data[1].y")
    assert len(gold_trace) == 101 and max(gold_trace) > gold_trace[-1] + 0.3  # up, then down
    screenshot(page, "playground-hacking")
    assert page.js_errors == []


def test_the_code_panel_shows_the_source_of_the_function_it_runs(page, server, screenshot):
    open_playground(page, server)
    page.click("label.pg-method:has(input[value=dpo])")
    page.wait_for_function("document.getElementById('code-method').textContent.includes('DPO')")
    page.wait_for_function(
        "document.getElementById('code-text').textContent.includes('def dpo_step')"
    )
    assert inspect.getsource(exact.dpo_step) in page.text_content("#code-text")
    page.click("#code-tabs button:text-is('dpo_loss')")
    assert inspect.getsource(dpo_loss) in page.text_content("#code-text")
    assert "method=dpo" in page.url and "learning_rate=5" in page.url
    page.click("#step")
    page.wait_for_function("document.getElementById('figures').dataset.step == '1'")
    page.locator("#mode-exact .pg-code").scroll_into_view_if_needed()
    screenshot(page, "playground-code")
    assert page.js_errors == []


def test_real_model_mode_and_the_reading(page, server, screenshot):
    open_playground(page, server, "?mode=real")
    assert page.is_visible("#mode-real") and not page.is_visible("#mode-exact")
    page.click("#real-sample")
    page.wait_for_selector("#real-pair:not([hidden])", timeout=60_000)
    page.wait_for_function("!document.querySelector('.pg-pick').disabled")
    page.click(".pg-pick[data-index='0']")
    page.wait_for_selector("#real-result:not([hidden])", timeout=60_000)
    assert "DPO loss" in page.inner_text("#real-summary")
    screenshot(page, "playground-real-model")
    page.click(".pg-tabs button[data-mode=read]")
    assert page.locator("#mode-read math").count() >= 8
    page.click("details.pg-qa >> nth=0")
    screenshot(page, "playground-read")
    assert "mode=read" in page.url
    assert page.js_errors == []


def test_a_run_that_diverges_stops_and_says_so(page, server, monkeypatch, screenshot):
    """Issue 26, item 6: the page used to stick on "Error: internal server error"."""
    monkeypatch.setitem(exact.LEARNING_RATES, "ppo", (0.05, 50.0))  # let PPO diverge
    open_playground(page, server, "?method=ppo&learning_rate=20")
    assert page.input_value("#learning_rate") == "20"
    page.click("#skip")
    page.wait_for_selector("#narration.pg-diverged", timeout=20_000)
    assert page.inner_text("#narration").startswith("Stopped: PPO diverged at step")
    step = figures(page)["step"]
    assert step >= 1  # the finite steps before it are shown
    screenshot(page, "playground-diverged")
    assert page.js_errors == []


def test_the_learning_rate_slider_offers_each_methods_range(page, server):
    open_playground(page, server)
    for method, (_low, high) in exact.LEARNING_RATES.items():
        page.click(f"label.pg-method:has(input[value={method}])")
        assert float(page.get_attribute("#learning_rate", "max")) == high
