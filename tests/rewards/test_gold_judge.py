"""The pipeline's gold judge on hand-written answers for both user groups."""

import pytest

from alignkit.errors import UserError
from alignkit.pipeline.task import GROUPS, TaskPrompt, build_task, split_task
from alignkit.rewards.gold_judge import WEIGHTS, GoldJudge


def judged(question, kind, answer=None, keywords=()):
    plain = TaskPrompt(question, "plain", kind, answer, keywords).record()
    steps = TaskPrompt(question, "steps", kind, answer, keywords).record()
    return GoldJudge.from_records([plain, steps]), plain["prompt"], steps["prompt"]


def test_a_correct_short_answer_is_gold_for_the_plain_group_only():
    judge, plain, steps = judged("What is 17 + 25?", "arithmetic", "42")
    short = "17 + 25 is 42."
    out = judge([plain, steps], [short, short])
    assert out.scores[0] == pytest.approx(1.0)
    # for the steps group: too short (4 words: 21 below the 25-word window) and no steps
    assert out.parts["length"][1] == pytest.approx(WEIGHTS["length"] * (1 - 21 / 65))
    assert out.parts["style"][1] == 0.0
    assert out.scores[1] == pytest.approx(1.0 - WEIGHTS["style"] - WEIGHTS["length"] * 21 / 65)


def test_steps_answer_wins_for_the_steps_group():
    judge, plain, steps = judged("What is 17 + 25?", "arithmetic", "42")
    explained = (
        "First, add the tens: 10 and 20 make 30. Then add the ones: 7 and 5 make 12. "
        "Next, put the two parts together, 30 and 12. Finally, the answer is 42, "
        "so 17 + 25 is 42."
    )
    out = judge([steps, plain], [explained, explained])
    assert out.scores[0] == pytest.approx(1.0)
    assert out.parts["style"][1] == 0.0  # the plain group wants no list of steps


@pytest.mark.parametrize(
    ("answer", "failed"),
    [
        ("43.", "content"),
        ("I can't answer that, but it is 42.", "not_evasive"),
        ("Great question! It is 42.", "not_padded"),
        ("42 42 42 42 42 42 42 42", "not_repetitive"),
    ],
)
def test_each_hack_costs_its_part(answer, failed):
    judge, plain, _ = judged("What is 17 + 25?", "arithmetic", "42")
    out = judge([plain], [answer])
    assert out.parts[failed][0] == 0.0
    assert out.scores[0] <= 1.0 - WEIGHTS[failed] + 1e-6


def test_open_questions_are_judged_by_topic_words():
    judge, plain, _ = judged(
        "Explain rain to a five-year-old.", "explain", keywords=("cloud", "water", "drops")
    )
    out = judge([plain, plain], ["Water drops fall from the clouds.", "Cats are nice pets."])
    assert out.parts["content"][0] == WEIGHTS["content"] and out.parts["content"][1] == 0.0


def test_unknown_prompts_are_a_clear_error():
    judge, _, _ = judged("What is 1 + 1?", "arithmetic", "2")
    with pytest.raises(UserError, match="does not know"):
        judge(["What is 2 + 2?"], ["4"])


def test_the_task_has_both_groups_per_question_and_a_clean_split():
    prompts = build_task()
    assert len(prompts) == 224 and {p.group for p in prompts} == set(GROUPS)
    assert len({p.question for p in prompts}) == 112
    assert {p.kind for p in prompts} == {"arithmetic", "capital", "fact", "explain", "everyday"}
    train, test = split_task(prompts)
    assert len(test) == 56 and not {p.question for p in train} & {p.question for p in test}
    assert build_task() == prompts  # deterministic
    judge = GoldJudge.from_records([p.record() for p in prompts])
    assert len(judge.entries) == 224


def test_the_reward_builder_loads_the_gold_judge_from_a_prompt_file(tmp_path):
    import json

    from alignkit.rewards import build_reward

    rows = [TaskPrompt("What is 1 + 1?", "plain", "arithmetic", "2").record()]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = build_reward({"gold_judge": {"prompts": str(path)}})
    assert reward([rows[0]["prompt"]], ["1 + 1 is 2."]).scores[0] == pytest.approx(1.0)
    with pytest.raises(UserError, match="gold_judge"):
        build_reward({"gold_judge": {"file": "x"}})
    with pytest.raises(UserError, match="not found"):
        build_reward({"gold_judge": {"prompts": str(tmp_path / "none.jsonl")}})
