"""A verifiable judge for the packaged demo task: a gold signal that cannot be hacked by style.

The demo prompts (`alignkit/data/demo/prompts.jsonl`) are short factual questions whose
answer is one word or number. The judge knows those answers and scores by rule, so it is a
"gold" reward next to a learned proxy: when the proxy rises while the judge falls, the policy
is hacking the proxy (Gao et al. 2022), which `alignkit.guard` watches for as ``gold/score``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignkit.errors import UserError
from alignkit.rewards.base import Prompt, RewardOutput, check_batch, prompt_text
from alignkit.rewards.text import (
    DEFAULT_EVASIVE_PHRASES,
    is_evasive,
    length_in_words,
    repeated_ngram_fraction,
)


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def contains_answer(response: str, answer: str) -> bool:
    """True if ``answer`` occurs in ``response`` as whole words, case-insensitively
    ("21" is in "It is 21." but not in "121")."""
    pattern = r"(?<!\w)" + re.escape(answer.lower()) + r"(?!\w)"
    return re.search(pattern, response.lower()) is not None


class DemoJudge:
    """score = 1 if the response is correct, concise, not evasive and not repetitive, else 0.

    * correct: holds the reference answer as whole words (`contains_answer`);
    * concise: at most ``max_words`` words (the demo's detailed answers have under 25);
    * evasive: `is_evasive` with the default phrases;
    * repetitive: more than ``max_repeated`` of its word bigrams repeat (the demo's
      "Paris Paris Paris" hack).

    ``parts`` holds each check as 0/1 (correct, concise, evasive, repetitive). A question
    the judge has no answer for is a `UserError`: a silent 0 would read as "the policy got
    worse". Build from the demo data with `DemoJudge.from_demo_data()` or pass your own
    question → answer mapping.
    """

    name = "gold"

    def __init__(
        self, answers: Mapping[str, str], *, max_words: int = 30, max_repeated: float = 0.25
    ):
        self.answers = {_question_key(q): a for q, a in answers.items()}
        self.max_words, self.max_repeated = max_words, max_repeated

    @classmethod
    def from_demo_data(cls, path: str | Path | None = None, **options) -> DemoJudge:
        """Answers from a prompts JSONL with ``prompt`` and ``answer`` (default: the demo's)."""
        if path is None:
            from alignkit.data.demo import demo_path

            path = demo_path("prompt")
        answers = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    answers[prompt_text(row["prompt"])] = str(row["answer"])
        return cls(answers, **options)

    def answer_for(self, prompt: Prompt) -> str:
        question = prompt_text(prompt)
        try:
            return self.answers[_question_key(question)]
        except KeyError:
            raise UserError(f"DemoJudge has no reference answer for '{question}'") from None

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        checks: dict[str, list[float]] = {
            "correct": [],
            "concise": [],
            "evasive": [],
            "repetitive": [],
        }
        for prompt, response in zip(prompts, responses, strict=True):
            checks["correct"].append(float(contains_answer(response, self.answer_for(prompt))))
            checks["concise"].append(float(length_in_words(response) <= self.max_words))
            checks["evasive"].append(float(is_evasive(response, DEFAULT_EVASIVE_PHRASES)))
            checks["repetitive"].append(
                float(repeated_ngram_fraction(response, 2) > self.max_repeated)
            )
        scores = [
            c * k * (1 - e) * (1 - r)
            for c, k, e, r in zip(
                checks["correct"],
                checks["concise"],
                checks["evasive"],
                checks["repetitive"],
                strict=True,
            )
        ]
        return RewardOutput(scores, checks)
