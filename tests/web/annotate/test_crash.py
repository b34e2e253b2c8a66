"""`alignkit serve` killed with SIGKILL mid-session: every acknowledged label survives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx

from alignkit.web.annotate.projects import new_pairs_project
from alignkit.web.auth import create_annotator
from alignkit.web.store import Store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_serve(db, tmp_path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "alignkit", "serve", "--db", str(db), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--runs", str(tmp_path / "runs")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.stdout.read().decode()}")
        try:
            httpx.get(url + "/annotate", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("serve did not start")


def test_a_server_killed_with_sigkill_restarts_with_every_acknowledged_label(tmp_path, make_pairs):
    db = tmp_path / "labels.db"
    store = Store(db)
    new_pairs_project(store, make_pairs(60), overlap=2, name="crash")
    tokens = [create_annotator(store, name) for name in ("ann", "ben", "cat")]
    store.close()
    acknowledged: set[str] = set()
    stop = threading.Event()

    def label_until_stopped(url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            while not stop.is_set():
                try:
                    item = client.get("/api/annotate/next").json()["item"]
                    if item is None:
                        return
                    client_id = uuid.uuid4().hex
                    body = {"client_id": client_id, "item_id": item["id"], "pick": "left"}
                    response = client.post("/api/annotate/labels", json=body)
                except httpx.TransportError:
                    return  # the server is gone; what it acknowledged is all that counts
                if response.status_code == 201:
                    acknowledged.add(client_id)

    process, url = _start_serve(db, tmp_path)
    try:
        threads = [threading.Thread(target=label_until_stopped, args=(url, t)) for t in tokens]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)  # mid-session: the clients are still submitting
        process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 25

    process, url = _start_serve(db, tmp_path)
    try:
        admin = Store(db)
        stored = {label.client_id for label in admin.labels()}
        assert acknowledged <= stored  # every acknowledged label is there
        assert len(stored) - len(acknowledged) <= len(tokens)  # at most the in-flight ones
        # and the restarted server goes on where it stopped
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        item = httpx.get(url + "/api/annotate/next", headers=headers).json()["item"]
        body = {"client_id": uuid.uuid4().hex, "item_id": item["id"], "pick": "right"}
        response = httpx.post(url + "/api/annotate/labels", json=body, headers=headers)
        assert response.status_code == 201
        assert admin.label_count() == len(stored) + 1
        admin.close()
    finally:
        process.kill()
        process.wait(timeout=30)
