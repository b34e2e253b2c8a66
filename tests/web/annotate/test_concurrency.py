"""Twenty annotators at once over a real uvicorn server: no label lost, none duplicated.

Each client labels until its queue is empty; along the way it re-sends some submits with
the same client id (a retry after a lost answer), sends some twice at the same moment (a
double click), and submits some items a second time from "another tab" (a new client id).
Afterwards the database must hold exactly one row per acknowledged label, every item
exactly ``overlap`` labels, and nothing else.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from alignkit.web import ServeSettings, create_app
from alignkit.web.annotate.projects import new_pairs_project
from alignkit.web.auth import create_annotator
from alignkit.web.store import Store

CLIENTS = 20
OVERLAP = 2
ITEMS = 250  # 250 items × overlap 2 = 500 labels in all


def test_twenty_clients_submitting_500_labels_lose_none_and_duplicate_none(
    live_server, tmp_path, make_pairs
):
    db = tmp_path / "labels.db"
    store = Store(db)
    new_pairs_project(store, make_pairs(ITEMS), overlap=OVERLAP, name="load")
    tokens = [create_annotator(store, f"annotator-{i:02d}") for i in range(CLIENTS)]
    server = live_server(create_app(ServeSettings(db=db, runs_dir=tmp_path / "runs")))
    counts = Counter()
    acknowledged: dict[str, tuple[str, int]] = {}  # client id -> (token, item)
    lock = threading.Lock()

    def post(client: httpx.Client, body: dict) -> httpx.Response:
        for attempt in range(5):  # a retry on a transport error resends the same body
            try:
                return client.post("/api/annotate/labels", json=body)
            except httpx.TransportError:
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("the server stopped answering")

    def annotate(index: int) -> None:
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            while True:
                item = client.get("/api/annotate/next").json()["item"]
                if item is None:
                    return
                body = {
                    "client_id": uuid.uuid4().hex,
                    "item_id": item["id"],
                    "pick": rng.choice(["left", "right", "tie", "both_bad"]),
                    "time_on_item_ms": rng.randint(500, 5000),
                }
                roll = rng.random()
                if roll < 0.15:  # a double click: the same submit twice at once
                    with ThreadPoolExecutor(2) as pair:
                        responses = list(pair.map(post, [client, client], [body, body]))
                    kind = "double"
                else:
                    responses = [post(client, body)]
                    kind = "single"
                if 0.15 <= roll < 0.35:  # a retry after the answer was "lost"
                    responses.append(post(client, body))
                    kind = "retry"
                statuses = sorted(r.status_code for r in responses)
                assert statuses == [200] * (len(responses) - 1) + [201], statuses
                assert all(not r.json()["duplicate"] for r in responses if r.status_code == 201)
                if 0.35 <= roll < 0.45:  # another tab submits the same item again
                    other = body | {"client_id": uuid.uuid4().hex, "pick": "tie"}
                    clash = post(client, other)
                    assert clash.status_code == 409, clash.text
                    with lock:
                        counts["second_tab"] += 1
                with lock:
                    counts["labels"] += 1
                    counts["duplicates"] += len(responses) - 1
                    counts[kind] += 1
                    acknowledged[body["client_id"]] = (tokens[index], item["id"])

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(annotate, range(CLIENTS)))
    elapsed = time.perf_counter() - start

    reopened = Store(db)  # what is on disk, through a fresh connection
    rows = reopened.labels()
    print(
        f"\n{CLIENTS} clients: {counts['labels']} labels sent, {counts['duplicates']} duplicate "
        f"submits ({counts['double']} double clicks, {counts['retry']} retries), "
        f"{counts['second_tab']} second-tab submits refused, {len(rows)} rows stored, "
        f"{elapsed:.1f} s"
    )
    assert counts["labels"] == ITEMS * OVERLAP == 500
    assert counts["duplicates"] > 50 and counts["second_tab"] > 20
    assert len(rows) == 500
    assert {row.client_id for row in rows} == set(acknowledged)
    assert len({(row.item_id, row.annotator) for row in rows}) == 500
    assert set(Counter(row.item_id for row in rows).values()) == {OVERLAP}
    for row in rows:
        assert row.item_id == acknowledged[row.client_id][1]
    reopened.close()
    store.close()
