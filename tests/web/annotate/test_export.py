"""The export rules: majority or each label, ties as votes or left out, flagged dropped."""

from __future__ import annotations

import json

import pytest

from alignkit.data.records import validate_row
from alignkit.web.annotate.export import ExportRule, export_rows, export_to_files, sidecar_path
from alignkit.web.auth import create_annotator


@pytest.fixture
def labelled(store, make_pairs):
    """Three items, three annotators each, with known votes (a, b, tie, both_bad)."""
    from alignkit.web.annotate.projects import new_pairs_project

    new_pairs_project(store, make_pairs(3), overlap=3, name="rules")
    ids = {name: store.add_annotator(name, f"hash-{name}").id for name in ("p", "q", "r")}
    votes = {1: ("a", "a", "b"), 2: ("a", "tie", "tie"), 3: ("b", "tie", "both_bad")}

    def cast(name: str, index: int) -> None:
        assignment = store.next_assignment(ids[name])
        store.add_label(
            client_id=f"{name}-{assignment.item.id:04d}",
            annotator_id=ids[name],
            item_id=assignment.item.id,
            choice=votes[assignment.item.id][index],
        )

    for _ in range(3):
        for index, name in enumerate(("p", "q", "r")):
            cast(name, index)
    return store


def _sides(rows, store):
    """Item id → the side chosen, recovered from the chosen text."""
    items = {item.answer_a: (item.id, "a") for item in store.items()}
    items |= {item.answer_b: (item.id, "b") for item in store.items()}
    return dict(items[row["chosen"]] for row in rows)


def test_majority_with_ties_as_votes_keeps_only_strict_a_or_b_majorities(labelled):
    rows, sidecar = export_rows(labelled, ExportRule(keep_flagged=True))
    assert _sides(rows, labelled) == {1: "a"}  # item 2's majority is "tie", item 3 has none
    assert rows[0]["annotator"] == "p+q"
    assert sidecar["left_out"]["no_majority"] == 2
    assert sidecar["left_out"]["tie_or_both_bad_labels"] == 4


def test_majority_with_ties_dropped_counts_only_a_and_b_votes(labelled):
    rows, _ = export_rows(labelled, ExportRule(ties="drop", keep_flagged=True))
    assert _sides(rows, labelled) == {1: "a", 2: "a", 3: "b"}


def test_min_labels_leaves_out_items_with_too_few(labelled):
    rows, sidecar = export_rows(labelled, ExportRule(ties="drop", keep_flagged=True, min_labels=2))
    assert _sides(rows, labelled) == {1: "a"}  # items 2 and 3 have one a/b vote each
    assert sidecar["left_out"]["too_few_labels"] == 2


def test_each_rule_gives_every_a_or_b_label_its_own_row(labelled):
    rows, _ = export_rows(labelled, ExportRule(rule="each", keep_flagged=True))
    assert sorted(row["annotator"] for row in rows) == ["p", "p", "p", "q", "r"]


def test_flagged_annotators_are_dropped_unless_kept(store, make_pairs):
    from alignkit.web.annotate.projects import new_pairs_project

    new_pairs_project(store, make_pairs(12), overlap=3, name="flags")
    ids = {n: store.add_annotator(n, f"h-{n}").id for n in ("good-1", "good-2", "contrarian")}
    for name, choice in (("good-1", "a"), ("good-2", "a"), ("contrarian", "b")):
        while (assignment := store.next_assignment(ids[name])) is not None:
            store.add_label(
                client_id=f"{name}-{assignment.item.id:04d}",
                annotator_id=ids[name],
                item_id=assignment.item.id,
                choice=choice,
            )
    rows, sidecar = export_rows(store, ExportRule(rule="each"))
    assert sidecar["dropped_annotators"] == ["contrarian"]
    assert {row["annotator"] for row in rows} == {"good-1", "good-2"}
    kept, _ = export_rows(store, ExportRule(rule="each", keep_flagged=True))
    assert len(kept) == 36


def test_message_list_prompts_export_message_list_answers_that_validate(store, tmp_path):
    from alignkit.web.annotate.projects import new_pairs_project

    prompt = [{"role": "user", "content": "Say hi."}]
    new_pairs_project(store, [(prompt, "Hi!", "No.", "polite")], overlap=1, name="chat")
    token_id = store.add_annotator("solo", "h").id
    assignment = store.next_assignment(token_id)
    store.add_label(client_id="solo-0001", annotator_id=token_id, item_id=1, choice="a")
    assert assignment.item.id == 1
    out = tmp_path / "chat.jsonl"
    sidecar = export_to_files(store, out, ExportRule())
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["chosen"] == [{"role": "assistant", "content": "Hi!"}]
    record = validate_row(row, "preference")
    assert record.group == "polite" and record.annotator == "solo"
    assert json.loads(sidecar_path(out).read_text()) == sidecar


def test_an_annotator_name_with_a_separator_is_refused(store):
    with pytest.raises(ValueError, match="1-64 characters"):
        create_annotator(store, "a|b")
