import json

import pytest

from alignkit.data.demo import demo_path
from alignkit.errors import UserError
from alignkit.rewards import DemoJudge, contains_answer


@pytest.fixture(scope="module")
def judge():
    return DemoJudge.from_demo_data()


def test_contains_answer_whole_words():
    assert contains_answer("It is 21.", "21")
    assert not contains_answer("It is 121.", "21")
    assert contains_answer("mexico city, of course", "Mexico City")
    assert contains_answer("Twenty-four.", "Twenty-four")


def test_each_check_by_hand(judge):
    q = [{"role": "user", "content": "What is the capital of France?"}]
    out = judge(
        [q] * 5,
        [
            "Paris.",
            "Berlin.",
            "I'm sorry, but I can't answer that. Paris.",
            "Paris Paris Paris Paris Paris.",
            "Paris. " + "It is a lovely city with many sights. " * 6,
        ],
    )
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.parts["correct"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert out.parts["evasive"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert out.parts["repetitive"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert out.parts["concise"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_demo_data_chosen_pass_and_bad_rejected_fail(judge):
    rows = [json.loads(line) for line in demo_path("preference").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows]
    chosen = judge(prompts, [r["chosen"][0]["content"] for r in rows]).scores
    rejected = judge(prompts, [r["rejected"][0]["content"] for r in rows]).scores
    assert chosen.min().item() == 1.0
    for row, score in zip(rows, rejected.tolist(), strict=True):
        bad = row["rejected_kind"] in ("evasive", "rambling", "repetitive", "wrong")
        assert score == (0.0 if bad else 1.0), row


def test_plain_string_prompts_and_unknown_questions(judge):
    assert judge(["what is the capital of  france?"], ["paris"]).scores.tolist() == [1.0]
    with pytest.raises(UserError, match="no reference answer for 'Who are you\\?'"):
        judge(["Who are you?"], ["Me."])
