"""The shared app: pages, plotly's JS from the package, one-line errors, the body limit."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from alignkit.web import ServeSettings, create_app


@pytest.fixture
def client(tmp_path):
    app = create_app(ServeSettings(db=tmp_path / "labels.db", runs_dir=tmp_path / "runs"))
    return TestClient(app, raise_server_exceptions=False)


def test_index_links_every_area(client):
    html = client.get("/").text
    for href in ("/annotate", "/playground", "/runs"):
        assert f'href="{href}"' in html


def test_plotly_js_is_served_from_the_installed_package(client):
    import plotly.offline

    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.text[:2000] == plotly.offline.get_plotlyjs()[:2000]


def test_static_names_cannot_leave_the_folder(client):
    assert client.get("/static/base.css").status_code == 200
    for name in ("..%2Fapp.py", "%2E%2E%2F__init__.py", ".hidden"):
        assert client.get(f"/static/{name}").status_code == 404


def test_a_body_over_the_limit_is_refused_with_one_line(tmp_path):
    app = create_app(ServeSettings(db=tmp_path / "l.db", runs_dir=tmp_path, max_body_bytes=100))
    router = APIRouter()

    @router.post("/echo")
    def echo(payload: dict) -> dict:
        return payload

    app.include_router(router)
    client = TestClient(app)
    response = client.post(
        "/echo", content=b"x" * 101, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "limit of 100 bytes" in response.json()["error"]


def test_bad_json_and_bugs_get_one_line_never_a_traceback(tmp_path):
    app = create_app(ServeSettings(db=tmp_path / "l.db", runs_dir=tmp_path))
    router = APIRouter()

    @router.post("/echo")
    def echo(payload: dict) -> dict:
        return payload

    @router.get("/boom")
    def boom() -> dict:
        raise RuntimeError("secret internals")

    app.include_router(router)
    client = TestClient(app, raise_server_exceptions=False)
    bad = client.post("/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422
    assert "\n" not in bad.json()["error"]
    crash = client.get("/boom")
    assert crash.status_code == 500
    assert crash.json() == {"error": "internal server error"}
    assert "secret" not in crash.text and "Traceback" not in crash.text


def test_unknown_path_is_a_json_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.browser
def test_index_page_renders_in_chromium(live_server, page, screenshot, tmp_path):
    server = live_server(create_app(ServeSettings(db=tmp_path / "l.db", runs_dir=tmp_path)))
    page.goto(server.url + "/")
    assert page.locator(".card").count() == 3
    assert page.evaluate("getComputedStyle(document.body).margin") == "0px"  # base.css loaded
    screenshot(page, "index")
    assert page.js_errors == []


def _echo_app(tmp_path, limit: int):
    app = create_app(ServeSettings(db=tmp_path / "l.db", runs_dir=tmp_path, max_body_bytes=limit))
    router = APIRouter()

    @router.post("/echo")
    def echo(payload: dict) -> dict:
        return {"keys": len(payload)}

    app.include_router(router)
    return app


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(tmp_path, live_server):
    """A chunked upload has no length to check up front. The server must answer 413 once
    the limit is passed, not read the whole body first: here the body never ends, so a
    server that waits for its end never answers."""
    import socket

    server = live_server(_echo_app(tmp_path, limit=64 * 1024))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 16 * 1024
        for _ in range(8):  # 128 KiB, twice the limit, and no final chunk
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.settimeout(5)
        answer = b""
        try:
            while not answer.endswith(b"}"):  # the head, then the one-line JSON body
                part = conn.recv(4096)
                if not part:
                    break
                answer += part
        except TimeoutError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit of 65536 bytes" in answer


def test_a_chunked_body_under_the_limit_is_read(tmp_path, live_server):
    import httpx

    server = live_server(_echo_app(tmp_path, limit=64 * 1024))

    def body():
        yield b'{"a": 1,'
        yield b' "b": 2}'

    response = httpx.post(
        f"{server.url}/echo", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json() == {"keys": 2}


# ------------------------------------------------------------------ exposure (issue 26, 7)


def test_every_response_carries_the_security_headers(client):
    for url in ("/", "/runs", "/static/base.css", "/api/runs", "/no-such-page"):
        headers = client.get(url).headers
        assert headers["x-content-type-options"] == "nosniff", url
        assert headers["x-frame-options"] == "DENY", url
        assert "frame-ancestors 'none'" in headers["content-security-policy"], url
    page_policy = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in page_policy and "default-src 'self'" in page_policy


def test_a_host_header_that_is_not_ours_is_refused(tmp_path):
    settings = ServeSettings(
        db=tmp_path / "l.db", runs_dir=tmp_path, allowed_hosts=("127.0.0.1", "localhost")
    )
    client = TestClient(create_app(settings), base_url="http://127.0.0.1:8000")
    assert client.get("/api/runs").status_code == 200
    assert client.get("/api/runs", headers={"host": "localhost:8000"}).status_code == 200
    rebound = client.get("/api/runs", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 400


def test_the_hosts_a_server_answers_to():
    from alignkit.web.serve import allowed_hosts

    assert set(allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost"}
    assert set(allowed_hosts("10.1.2.3")) == {"10.1.2.3", "127.0.0.1", "localhost"}
    assert "labs.example" in allowed_hosts("0.0.0.0", extra=["labs.example"])
    assert "127.0.0.1" in allowed_hosts("0.0.0.0")


def test_a_public_host_gets_a_warning(capsys):
    from alignkit.web.serve import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        warning = exposure_warning(host)
        assert warning is not None and "plain HTTP" in warning and "anyone" in warning


def test_a_run_folders_html_is_sandboxed_off_the_apps_origin(tmp_path):
    pipe = tmp_path / "runs" / "pipe"
    pipe.mkdir(parents=True)
    (pipe / "summary.json").write_text("{}")
    (pipe / "report.html").write_text("<script>sessionStorage.token</script>")
    app = create_app(ServeSettings(db=tmp_path / "l.db", runs_dir=tmp_path / "runs"))
    response = TestClient(app).get("/runs/report", params={"id": "pipe"})
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "sandbox" in policy and "allow-same-origin" not in policy
