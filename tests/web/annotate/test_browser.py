"""The labelling page in headless Chromium: mouse, keyboard, export, auth, text-only answers."""

from __future__ import annotations

import json

import pytest

from alignkit.web import ServeSettings, create_app
from alignkit.web.annotate.projects import new_pairs_project
from alignkit.web.auth import create_annotator
from alignkit.web.store import Store

pytestmark = pytest.mark.browser

XSS = "<script>alert(1)</script>"


@pytest.fixture
def served(live_server, tmp_path):
    """A server on a store with four pairs (one whose answer is a script tag), a labeller
    and an admin; returns (url, store, labeller token, admin token)."""
    db = tmp_path / "labels.db"
    store = Store(db)
    pairs = [
        (
            [
                {"role": "system", "content": "Answer plainly and kindly."},
                {"role": "user", "content": "How do I boil an egg?"},
            ],
            "Put the egg in boiling water for 9 minutes, then cool it in cold water.",
            "Eggs are laid by hens. Many people like eggs for breakfast.",
            "steps",
        ),
        ("What is 2 + 2?", "4", "2 + 2 is 5.", None),
        ("Name a prime number.", f"Here: {XSS} 7", "Nine.", None),
        ("What is the capital of France?", "Paris.", "Lyon, I think.", None),
    ]
    new_pairs_project(store, pairs, overlap=1, name="browser")
    token = create_annotator(store, "dana")
    admin = create_annotator(store, "admin", is_admin=True)
    server = live_server(create_app(ServeSettings(db=db, runs_dir=tmp_path / "runs")))
    yield server.url, store, token, admin
    store.close()


def _sign_in(page, url: str, token: str) -> None:
    page.goto(url + "/annotate")
    page.fill("#token", token)
    page.click("#login-form button")
    page.wait_for_selector("#work:not([hidden])")


def _wait_done(page, done: int) -> None:
    """Until the page counts ``done`` labels and is ready for the next (or has none left)."""
    page.wait_for_function(
        f"document.getElementById('done').textContent === '{done}' && "
        "(!document.querySelector('.ak-choice').disabled || "
        "!document.getElementById('empty').hidden)"
    )


def test_an_annotator_labels_with_the_mouse_and_the_keyboard_and_export_holds_them(
    served, page, screenshot, tmp_path
):
    url, store, token, admin = served
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    _sign_in(page, url, token)
    page.wait_for_selector("#left-text:not(:empty)")
    assert page.inner_text("#who") == "dana"
    screenshot(page, "annotate-labelling")

    left_answers = []
    for done, pick in enumerate(["left", "right"], start=1):  # the mouse
        left_answers.append(page.inner_text("#left-text"))
        if done == 1:
            page.fill("#reason", "it actually answers")
        page.click(f".ak-choice[data-pick={pick}]")
        _wait_done(page, done)
    page.keyboard.press("1")  # the keyboard: A (left) is better
    _wait_done(page, 3)
    page.keyboard.press("3")  # tie
    _wait_done(page, 4)
    page.wait_for_selector("#empty:not([hidden])")
    screenshot(page, "annotate-done")
    assert page.js_errors == []

    labels = store.labels()
    assert [label.choice for label in labels][2:] == [labels[2].shown_left, "tie"]
    assert labels[0].reason == "it actually answers" and labels[1].reason is None
    assert all(label.time_on_item is not None and label.time_on_item >= 0 for label in labels)

    # the admin downloads the export from the stats page
    page.click("#logout")
    _sign_in(page, url, admin)
    page.click("#stats-link")
    page.wait_for_selector("#annotators tbody tr")
    with page.expect_download() as download_info:
        page.click("#download")
    path = tmp_path / "downloaded.jsonl"
    download_info.value.save_as(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3  # three a/b picks; the tie is no pair
    chosen = [
        row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][0]["content"]
        for row in rows
    ]
    assert left_answers[0] in chosen  # the first, picked "left" with the mouse
    assert {row["annotator"] for row in rows} == {"dana"}
    page.wait_for_selector("#export-message:not(:empty)")
    screenshot(page, "annotate-stats")
    assert page.js_errors == []


def test_a_label_without_a_token_is_refused(served, page):
    url, store, _token, _admin = served
    page.goto(url + "/annotate")
    page.wait_for_selector("#login:not([hidden])")
    status = page.evaluate(
        """async () => (await fetch('/api/annotate/labels', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({client_id: 'browser-1', item_id: 1, pick: 'left'})})).status"""
    )
    assert status == 401
    page.fill("#token", "wrong-token")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:not(:empty)")
    assert "not valid" in page.inner_text("#login-error")
    assert store.label_count() == 0


def test_an_answer_with_a_script_tag_shows_as_text(served, page, screenshot):
    url, _store, token, _admin = served
    page.on("dialog", lambda dialog: pytest.fail(f"the script ran: {dialog.message}"))
    _sign_in(page, url, token)
    for _ in range(4):
        page.wait_for_selector("#left-text:not(:empty)")
        texts = page.inner_text("#left-text") + page.inner_text("#right-text")
        if XSS in texts:
            break
        done = int(page.inner_text("#done"))
        page.keyboard.press("4")
        _wait_done(page, done + 1)
    assert XSS in texts
    assert page.locator(".ak-answer script").count() == 0
    screenshot(page, "annotate-script-as-text")
    assert page.js_errors == []


def test_online_mode_shows_how_the_labelled_pairs_margin_moved(
    live_server, tmp_path, page, screenshot
):
    import httpx

    from alignkit.web.annotate.online import OnlineDPOSettings
    from alignkit.web.annotate.projects import new_prompts_project
    from alignkit.web.annotate.sampling import PairSampling
    from alignkit.web.annotate.worker import WorkerSettings

    db = tmp_path / "labels.db"
    store = Store(db)
    prompts = [("Write one word about the sea.", None), ("Write one word about the sky.", None)]
    new_prompts_project(store, prompts, model="tiny-random-llama", overlap=2, name="online")
    browser_token, api_token = create_annotator(store, "eli"), create_annotator(store, "fay")
    worker = WorkerSettings(
        model="tiny-random-llama",
        online_dpo=OnlineDPOSettings(every=2, steps=2, learning_rate=1e-3, batch_size=2),
        sampling=PairSampling(max_new_tokens=16, batch_size=2),
        runs_dir=tmp_path / "runs",
        poll_s=0.05,
    )
    settings = ServeSettings(db=db, runs_dir=tmp_path / "runs", extra={"annotate": worker})
    server = live_server(create_app(settings))
    _sign_in(page, server.url, browser_token)
    picked = {}
    for done in (1, 2):  # eli picks the left answer of both pairs with the keyboard
        page.wait_for_selector("#left-text:not(:empty)")
        picked[int(page.get_attribute("#task", "data-item"))] = page.inner_text("#left-text")
        page.keyboard.press("1")
        _wait_done(page, done)
    headers = {"Authorization": f"Bearer {api_token}"}
    for _ in range(2):  # fay agrees, through the API
        item = httpx.get(server.url + "/api/annotate/next", headers=headers).json()["item"]
        pick = "left" if item["left"] == picked[item["id"]] else "right"
        body = {"client_id": f"fay-{item['id']:06d}", "item_id": item["id"], "pick": pick}
        assert httpx.post(
            server.url + "/api/annotate/labels", json=body, headers=headers
        ).is_success
    page.wait_for_function(
        "document.getElementById('learning-text').textContent.includes('moved')", timeout=60000
    )
    text = page.inner_text("#learning-text")
    assert "update v1" in text and "log π(chosen) − log π(rejected)" in text
    page.wait_for_selector("#left-text:not(:empty)")  # a new pair, from the updated policy
    screenshot(page, "annotate-online-learning")
    assert page.js_errors == []
    store.close()
