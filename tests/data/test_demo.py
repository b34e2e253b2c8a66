import json

import pytest

from alignkit.data import (
    PreferenceExample,
    check_dataset,
    demo_path,
    load_dataset_records,
    load_records,
)
from alignkit.data.demo import make_demo
from alignkit.errors import UserError

REFUSALS = ("can't", "cannot", "not able", "rather not")


@pytest.mark.parametrize(
    ("kind", "fmt"), [("preference", "preference"), ("sft", "sft"), ("prompt", "prompt")]
)
def test_demo_files_load_cleanly_and_are_small(kind, fmt):
    path = demo_path(kind)
    assert path.is_file() and path.stat().st_size < 200_000
    result = load_records(path)
    assert result.format == fmt and result.num_dropped == 0
    assert {r.group for r in result.records} == {"concise", "detailed"}


def test_demo_preference_set_is_real():
    records = load_dataset_records(demo_path("preference"))
    assert 150 <= len(records) <= 300
    assert all(isinstance(r, PreferenceExample) and r.conversational for r in records)
    assert {r.margin for r in records} == {1.0, 2.0}
    answers = {
        r["prompt"][-1]["content"]: r["answer"]
        for r in map(json.loads, demo_path("prompt").read_text().splitlines())
    }
    for r in records:
        chosen = r.chosen[0]["content"]
        # the group's preference is stated in the prompt, so it can be learned
        assert r.prompt[0] == {"role": "system", "content": make_demo.GROUP_SYSTEM[r.group]}
        # a code-checkable preference: chosen holds the answer, is short, never refuses
        assert answers[r.prompt[-1]["content"]].lower() in chosen.lower()
        assert len(chosen) < 120 and not any(x in chosen for x in REFUSALS)
        if r.group == "concise":
            assert len(chosen) < len(r.rejected[0]["content"]) or r.margin == 2.0


def test_groups_disagree_on_some_prompts():
    records = load_dataset_records(demo_path("preference"))
    by_prompt = {}
    for r in records:
        question = r.prompt[-1]["content"]
        by_prompt.setdefault(question, set()).add((r.group, r.chosen[0]["content"]))
    conflicting = [p for p, v in by_prompt.items() if len({g for g, _ in v}) == 2]
    assert len(conflicting) >= 10


def test_make_demo_is_deterministic(tmp_path):
    paths = make_demo.write(tmp_path)
    for kind, path in paths.items():
        assert path.read_bytes() == demo_path(kind).read_bytes(), kind


def test_demo_check_summary():
    summary = check_dataset(demo_path("preference"))
    assert summary.num_duplicates == 0 and summary.num_valid == summary.num_rows


def test_unknown_demo_kind():
    with pytest.raises(UserError, match="no demo data 'dpo'"):
        demo_path("dpo")
