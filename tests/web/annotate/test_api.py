"""The annotate API through FastAPI's TestClient: tokens, the queue, labels, stats, export."""

from __future__ import annotations

import json

import pytest

from alignkit.feedback.agreement import agreement_summary
from alignkit.web.store import Store


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def _label(client, token, pick="left", *, client_id=None, reason=None):
    item = client.get("/api/annotate/next", headers=_auth(token)).json()["item"]
    body = {"client_id": client_id or f"cid-{token[:6]}-{item['id']}", "item_id": item["id"]}
    body |= {"pick": pick, "reason": reason, "time_on_item_ms": 1500}
    return item, client.post("/api/annotate/labels", json=body, headers=_auth(token))


def test_every_api_route_refuses_a_request_without_a_valid_token(client):
    for method, path in [
        ("get", "/api/annotate/next"),
        ("get", "/api/annotate/me"),
        ("get", "/api/stats"),
        ("get", "/api/annotate/export"),
    ]:
        for headers in ({}, _auth("not-a-token"), {"Authorization": "Basic abc"}):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert "token" in response.json()["error"]
    body = {"client_id": "abcdefgh", "item_id": 1, "pick": "left"}
    assert client.post("/api/annotate/labels", json=body).status_code == 401


def test_stats_and_export_need_the_admin_token(client, tokens):
    assert client.get("/api/stats", headers=_auth(tokens["alice"])).status_code == 403
    assert client.get("/api/annotate/export", headers=_auth(tokens["alice"])).status_code == 403
    assert client.get("/api/stats", headers=_auth(tokens["admin"])).status_code == 200


def test_a_label_maps_the_picked_side_to_the_answer_shown_there(client, tokens, store):
    picks = {}
    for _ in range(6):
        item, response = _label(client, tokens["alice"], "left")
        assert response.status_code == 201
        picks[item["id"]] = item["left"]
    for label in store.labels():
        item = store.item(label.item_id)
        shown_on_left = item.answer_a if label.shown_left == "a" else item.answer_b
        assert picks[label.item_id] == shown_on_left
        assert label.choice == label.shown_left  # picked left = picked the answer shown there
        assert label.time_on_item == 1.5 and label.created_at >= label.shown_at
    assert {label.shown_left for label in store.labels()} <= {"a", "b"}


def test_a_retry_with_the_same_client_id_stores_one_label(client, tokens, store):
    item, first = _label(client, tokens["alice"], "right", client_id="retry-0001")
    body = {"client_id": "retry-0001", "item_id": item["id"], "pick": "right"}
    again = client.post("/api/annotate/labels", json=body, headers=_auth(tokens["alice"]))
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["label"]["id"] == first.json()["label"]["id"]
    assert store.label_count() == 1


def test_a_second_tab_neither_duplicates_nor_overwrites(client, tokens, store):
    # Both tabs are shown the same open item; the first submit wins.
    tab_1 = client.get("/api/annotate/next", headers=_auth(tokens["bob"])).json()["item"]
    tab_2 = client.get("/api/annotate/next", headers=_auth(tokens["bob"])).json()["item"]
    assert tab_1["id"] == tab_2["id"]
    first = {"client_id": "tab1-aaaa", "item_id": tab_1["id"], "pick": "left"}
    second = {"client_id": "tab2-bbbb", "item_id": tab_2["id"], "pick": "right"}
    assert (
        client.post("/api/annotate/labels", json=first, headers=_auth(tokens["bob"])).status_code
        == 201
    )
    clash = client.post("/api/annotate/labels", json=second, headers=_auth(tokens["bob"]))
    assert clash.status_code == 409 and "already labelled" in clash.json()["error"]
    [label] = store.labels()
    assert label.client_id == "tab1-aaaa" and label.choice == label.shown_left


def test_a_client_id_cannot_be_reused_for_another_item_or_annotator(client, tokens):
    _label(client, tokens["alice"], client_id="shared-id-1")
    item = client.get("/api/annotate/next", headers=_auth(tokens["bob"])).json()["item"]
    body = {"client_id": "shared-id-1", "item_id": item["id"], "pick": "left"}
    response = client.post("/api/annotate/labels", json=body, headers=_auth(tokens["bob"]))
    assert response.status_code == 409


def test_an_item_never_given_to_the_annotator_cannot_be_labelled(client, tokens):
    body = {"client_id": "sneaky-01", "item_id": 7, "pick": "left"}
    response = client.post("/api/annotate/labels", json=body, headers=_auth(tokens["carol"]))
    assert response.status_code == 404 and "not given to you" in response.json()["error"]


@pytest.mark.parametrize(
    "body, where",
    [
        ({"client_id": "abcdefgh", "item_id": 1, "pick": "up"}, "pick"),
        ({"client_id": "short", "item_id": 1, "pick": "left"}, "client_id"),
        ({"client_id": "abcdefgh", "item_id": "x", "pick": "left"}, "item_id"),
        ({"client_id": "abcdefgh", "item_id": 1, "pick": "left", "admin": True}, "admin"),
        ({"client_id": "bad id with spaces", "item_id": 1, "pick": "left"}, "client_id"),
    ],
)
def test_a_bad_field_is_a_422_with_one_line_naming_it(client, tokens, body, where):
    response = client.post("/api/annotate/labels", json=body, headers=_auth(tokens["alice"]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert where in error and "\n" not in error


def test_bad_json_and_an_oversized_body_are_refused_in_one_line(client, tokens):
    headers = _auth(tokens["alice"]) | {"content-type": "application/json"}
    bad = client.post("/api/annotate/labels", content=b'{"pick": ', headers=headers)
    assert bad.status_code == 422 and "\n" not in bad.json()["error"]
    huge = {"client_id": "abcdefgh", "item_id": 1, "pick": "left", "reason": "x" * (2 << 20)}
    too_big = client.post("/api/annotate/labels", content=json.dumps(huge), headers=headers)
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    assert "Traceback" not in bad.text + too_big.text


def test_each_item_goes_to_overlap_annotators_and_nobody_twice(client, tokens, store):
    seen: dict[str, list[int]] = {}
    for name in ("alice", "bob", "carol"):
        while True:
            data = client.get("/api/annotate/next", headers=_auth(tokens[name])).json()
            if data["item"] is None:
                assert data["progress"]["remaining"] == 0
                break
            seen.setdefault(name, []).append(data["item"]["id"])
            body = {"client_id": f"{name}-{data['item']['id']:04d}", "item_id": data["item"]["id"]}
            response = client.post(
                "/api/annotate/labels", json=body | {"pick": "tie"}, headers=_auth(tokens[name])
            )
            assert response.status_code == 201
    for items in seen.values():
        assert len(items) == len(set(items))  # nobody saw an item twice
    per_item: dict[int, int] = {}
    for label in store.labels():
        per_item[label.item_id] = per_item.get(label.item_id, 0) + 1
    assert sorted(per_item.values()) == [2] * 10  # ten items, two annotators each
    assert len(seen["alice"]) == 10 and len(seen["bob"]) == 10 and "carol" not in seen


def test_a_skipped_item_goes_to_someone_else_and_never_back(client, tokens):
    first = client.get("/api/annotate/next", headers=_auth(tokens["alice"])).json()["item"]
    skipped = client.post(
        "/api/annotate/skip", json={"item_id": first["id"]}, headers=_auth(tokens["alice"])
    )
    assert skipped.status_code == 200
    shown = []
    for _ in range(10):
        data = client.get("/api/annotate/next", headers=_auth(tokens["alice"])).json()
        if data["item"] is None:
            break
        shown.append(data["item"]["id"])
        body = {"client_id": f"alice-{data['item']['id']:04d}", "item_id": data["item"]["id"]}
        client.post(
            "/api/annotate/labels", json=body | {"pick": "left"}, headers=_auth(tokens["alice"])
        )
    assert first["id"] not in shown and len(shown) == 9
    # bob and carol can both still label the skipped item (its two slots are free)
    for name in ("bob", "carol"):
        ids = []
        while item := client.get("/api/annotate/next", headers=_auth(tokens[name])).json()["item"]:
            ids.append(item["id"])
            body = {"client_id": f"{name}-{item['id']:04d}", "item_id": item["id"], "pick": "left"}
            client.post("/api/annotate/labels", json=body, headers=_auth(tokens[name]))
        assert first["id"] in ids


def test_progress_counts_done_and_remaining(client, tokens):
    me = client.get("/api/annotate/me", headers=_auth(tokens["alice"])).json()
    assert me["name"] == "alice" and me["admin"] is False
    assert me["progress"]["done"] == 0 and me["progress"]["remaining"] == 10
    _label(client, tokens["alice"])
    _, response = _label(client, tokens["alice"])
    assert response.json()["progress"] == {"done": 2, "remaining": 8, "sampling": 0}


def test_stats_are_the_feedback_packages_figures(client, tokens, store):
    # alice always picks left, bob always right: they disagree whenever the sides match
    for _ in range(10):
        _label(client, tokens["alice"], "left")
        _label(client, tokens["bob"], "right")
    stats = client.get("/api/stats", headers=_auth(tokens["admin"])).json()
    expected = agreement_summary([label.as_feedback_label() for label in store.labels()])
    assert stats["fleiss_kappa"] == pytest.approx(expected["fleiss_kappa"])
    assert stats["krippendorff_alpha"] == pytest.approx(expected["krippendorff_alpha"])
    assert stats["cohen_kappa"]["alice|bob"] == pytest.approx(expected["cohen_kappa"]["alice|bob"])
    assert stats["annotators"]["alice"]["left_rate"] == 1.0
    assert stats["annotators"]["bob"]["left_rate"] == 0.0
    assert stats["annotators"]["alice"]["median_seconds"] == 1.5
    assert stats["items_complete"] == 10 and stats["labels"] == 20
    assert any("left answer" in flag for flag in stats["annotators"]["alice"]["flags"])


def test_export_download_holds_the_majority_pairs(client, tokens, store):
    for _ in range(10):
        _label(client, tokens["alice"], "left")
    for _ in range(10):
        data = client.get("/api/annotate/next", headers=_auth(tokens["bob"])).json()["item"]
        # bob picks the same answer alice picked (by text, whatever side it is on now)
        alice = next(l for l in store.labels() if l.item_id == data["id"])  # noqa: E741
        stored = store.item(data["id"])
        alice_text = stored.answer_a if alice.choice == "a" else stored.answer_b
        pick = "left" if data["left"] == alice_text else "right"
        body = {"client_id": f"bob-{data['id']:04d}", "item_id": data["id"], "pick": pick}
        client.post("/api/annotate/labels", json=body, headers=_auth(tokens["bob"]))
    response = client.get("/api/annotate/export?keep_flagged=true", headers=_auth(tokens["admin"]))
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert len(rows) == 10 and response.headers["x-alignkit-rows"] == "10"
    assert {row["annotator"] for row in rows} == {"alice+bob"}
    assert {row["group"] for row in rows} == {"math"}
    for row in rows:
        assert {"prompt", "chosen", "rejected"} <= set(row) and row["chosen"] != row["rejected"]


def test_the_store_survives_reopening_with_every_label(db_path, client, tokens):
    for _ in range(4):
        _label(client, tokens["alice"])
    reopened = Store(db_path)
    try:
        assert reopened.label_count() == 4
        assert reopened.read().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reopened.close()


def test_integers_past_sqlites_range_are_a_422_not_a_500(client, tokens):
    huge = 2**63  # one past SQLite's largest integer
    for path, body in [
        ("/api/annotate/labels", {"client_id": "abcdefgh", "item_id": huge, "pick": "left"}),
        ("/api/annotate/skip", {"item_id": huge}),
    ]:
        response = client.post(path, json=body, headers=_auth(tokens["alice"]))
        assert response.status_code == 422, (path, response.text)
        assert "item_id" in response.json()["error"]
    response = client.get(f"/api/annotate/learning?item_id={huge}", headers=_auth(tokens["alice"]))
    assert response.status_code == 422


def test_how_a_pair_moved_is_shown_only_to_an_annotator_who_saw_it(client, tokens, store):
    item, response = _label(client, tokens["alice"], "left")
    assert response.status_code == 201
    store.add_policy_update(
        pairs=1, steps=1, loss_before=0.7, loss_after=0.6, moves=[(item["id"], "a", 0.1, 0.3)]
    )
    seen = client.get(
        f"/api/annotate/learning?item_id={item['id']}", headers=_auth(tokens["alice"])
    )
    assert seen.status_code == 200 and seen.json()["move"]["after"] == 0.3
    other = client.get(f"/api/annotate/learning?item_id={item['id']}", headers=_auth(tokens["bob"]))
    assert other.status_code == 404 and "not shown to you" in other.json()["error"]
