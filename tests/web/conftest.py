"""Fixtures for the web app: a live uvicorn server and headless Chromium via Playwright.

The browser is Debian's ``chromium`` (never a Playwright browser download). Where it or
the ``playwright`` package is missing, the browser tests are skipped with the reason and
the command that fixes it; ``pytest -ra`` (the project's default) lists every such skip.
Screenshots go to ``outputs/screenshots/`` (or ``$ALIGNKIT_SCREENSHOTS``) so a person can
look at each page a test saw.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ALIGNKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(
    os.environ.get(
        "ALIGNKIT_SCREENSHOTS", Path(__file__).resolve().parents[2] / "outputs" / "screenshots"
    )
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """An app served by uvicorn in a thread on 127.0.0.1; ``url`` is its base address."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """``live_server(app)`` serves ``app`` until the test ends and returns the LiveServer."""
    started: list[LiveServer] = []

    def start(app) -> LiveServer:
        server = LiveServer(app).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed; fix: .venv/bin/pip install playwright"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return (
            f"no chromium at {CHROMIUM}; fix: sudo apt-get install -y chromium "
            "(or set ALIGNKIT_CHROMIUM to a Chromium binary)"
        )
    return None


@pytest.fixture(scope="session")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _csp_violation(message, errors: list[str]) -> None:
    if message.type == "error" and "Content Security Policy" in message.text:
        errors.append(message.text)


@pytest.fixture
def page(browser, request):
    """A fresh page (its own context: no cookies or storage shared between tests). The
    app's Content-Security-Policy is bypassed here, because Playwright's `wait_for_function`
    evaluates its predicate as a string; `strict_page` keeps it."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    new_page.js_errors = errors
    yield new_page
    context.close()


@pytest.fixture
def strict_page(browser):
    """A fresh page with the app's Content-Security-Policy enforced; ``js_errors`` holds
    script errors and every policy violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    new_page.on("console", lambda message: _csp_violation(message, errors))
    new_page.js_errors = errors
    yield new_page
    context.close()


@pytest.fixture
def screenshot(request) -> Callable[..., Path]:
    """``screenshot(page, "name")`` saves a full-page PNG and returns its path."""

    def save(target_page, name: str | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name or request.node.name}.png"
        target_page.screenshot(path=str(path), full_page=True)
        return path

    return save
