"""Generate the built-in demo data (deterministic): ``python -m alignkit.data.demo.make_demo``.

The task: short factual questions (arithmetic, capitals, opposites, irregular plurals,
counts) whose correct answer code can check. Two user groups prefer different styles:

* ``concise`` users want the bare answer ("Paris.");
* ``detailed`` users want the answer plus one explanatory sentence.

Every question gets a "quality" pair (margin 2.0): the group's preferred answer against an
evasive refusal, rambling with no answer, a repetitive answer (a reward hack: it contains
the right word many times), or a wrong answer. Many also get a "style" pair (margin 1.0):
the preferred style against the other group's style, and some questions appear in both
groups with opposite style preferences. Every prompt opens with its group's system message
("The user wants the bare answer..."), so what is preferred follows from the prompt.
``rejected_kind`` names the kind of rejected answer.

Files written next to this script:
* preference.jsonl: prompt/chosen/rejected (conversational) + group, annotator, margin,
  rejected_kind;
* sft.jsonl: prompt/completion (conversational), the group's preferred style, + group;
* prompts.jsonl: prompt (conversational) + group + answer (the word a correct reply holds).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
OUT_DIR = Path(__file__).resolve().parent

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Greece", "Athens"),
    ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Denmark", "Copenhagen"),
]

OPPOSITES = [
    ("hot", "cold", "temperature"),
    ("big", "small", "size"),
    ("fast", "slow", "speed"),
    ("up", "down", "direction"),
    ("light", "dark", "brightness"),
    ("happy", "sad", "mood"),
    ("early", "late", "time"),
    ("full", "empty", "how much something holds"),
    ("open", "closed", "state"),
    ("wet", "dry", "moisture"),
    ("loud", "quiet", "sound"),
    ("old", "young", "age"),
    ("strong", "weak", "strength"),
    ("rich", "poor", "wealth"),
    ("tall", "short", "height"),
]

PLURALS = [
    ("mouse", "mice"),
    ("child", "children"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("goose", "geese"),
    ("man", "men"),
    ("woman", "women"),
    ("person", "people"),
    ("ox", "oxen"),
    ("cactus", "cacti"),
]

COUNTS = [
    (
        "How many legs does a spider have?",
        "Eight",
        "Spiders have eight legs, while insects have six.",
    ),
    ("How many legs does an insect have?", "Six", "Every insect has six legs on its thorax."),
    ("How many days are in a week?", "Seven", "A week has seven days, Monday through Sunday."),
    (
        "How many months are in a year?",
        "Twelve",
        "A year has twelve months, January through December.",
    ),
    ("How many hours are in a day?", "Twenty-four", "A day has twenty-four hours."),
    ("How many minutes are in an hour?", "Sixty", "An hour has sixty minutes."),
    ("How many sides does a triangle have?", "Three", "A triangle is a shape with three sides."),
    ("How many sides does a hexagon have?", "Six", "A hexagon is a shape with six sides."),
    ("How many continents are there?", "Seven", "By the usual count there are seven continents."),
    (
        "How many planets are in the Solar System?",
        "Eight",
        "The Solar System has eight planets since Pluto was reclassified.",
    ),
    (
        "How many wheels does a bicycle have?",
        "Two",
        "A bicycle has two wheels, one behind the other.",
    ),
    ("How many strings does a standard guitar have?", "Six", "A standard guitar has six strings."),
]

EVASIVE = [
    "I'm sorry, but I can't answer that.",
    "I'm not able to help with that question.",
    "That's not something I can answer.",
    "I'd rather not say.",
    "As an AI, I cannot provide an answer to this.",
]

RAMBLING = [
    "That's a great question! There are many different ways to think about it, and people "
    "have discussed questions like this for a long time. It really depends on how you look "
    "at it, and there is a lot to consider before giving any answer at all.",
    "Well, questions like this are always interesting. Before answering, it is worth "
    "stepping back and thinking about the bigger picture, the history, the context and all "
    "the different points of view that someone might have about it.",
    "Hmm, let me think. This is the kind of question that can lead in many directions, and "
    "it would be a shame to rush. There is so much to say, and every part of it connects to "
    "something else that is also worth mentioning.",
]


def _questions(rng: random.Random) -> list[dict]:
    """Each: question, answer (bare, for concise users), detail (one more sentence),
    wrong (a plausible wrong answer), key (the word a correct reply contains)."""
    qs = []
    for country, capital in CAPITALS:
        others = [c for _, c in CAPITALS if c != capital]
        qs.append(
            dict(
                question=f"What is the capital of {country}?",
                answer=f"{capital}.",
                detail=f"{capital} is the capital of {country}, where its national government sits.",
                wrong=f"{rng.choice(others)}.",
                key=capital,
            )
        )
    for word, opposite, scale in OPPOSITES:
        wrong = rng.choice([o for _, o, _ in OPPOSITES if o != opposite])
        qs.append(
            dict(
                question=f"What is the opposite of '{word}'?",
                answer=f"{opposite.capitalize()}.",
                detail=f"The opposite of '{word}' is '{opposite}'; both describe {scale}.",
                wrong=f"{wrong.capitalize()}.",
                key=opposite,
            )
        )
    for word, plural in PLURALS:
        qs.append(
            dict(
                question=f"What is the plural of '{word}'?",
                answer=f"{plural.capitalize()}.",
                detail=f"The plural of '{word}' is '{plural}'; it is irregular, so it does "
                "not just add -s.",
                wrong=f"{word.capitalize()}s.",
                key=plural,
            )
        )
    for question, answer, detail in COUNTS:
        wrong = rng.choice([a for _, a, _ in COUNTS if a != answer])
        qs.append(
            dict(
                question=question, answer=f"{answer}.", detail=detail, wrong=f"{wrong}.", key=answer
            )
        )
    seen = set()
    while len(seen) < 70:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        op = rng.choice(["+", "-", "*"])
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        verb = {"+": "Adding", "-": "Subtracting", "*": "Multiplying"}[op]
        how = {"+": f"{b} to {a}", "-": f"{b} from {a}", "*": f"{a} by {b}"}[op]
        qs.append(
            dict(
                question=f"What is {a} {op} {b}?",
                answer=f"{value}.",
                detail=f"{verb} {how} gives {value}.",
                wrong=f"{value + rng.choice([-2, -1, 1, 2])}.",
                key=str(value),
            )
        )
    return qs


def _styled(q: dict, style: str) -> str:
    return q["answer"] if style == "concise" else f"{q['answer']} {q['detail']}"


def _bad(q: dict, kind: str, rng: random.Random) -> str:
    if kind == "evasive":
        return rng.choice(EVASIVE)
    if kind == "rambling":
        return rng.choice(RAMBLING)
    if kind == "repetitive":
        word = q["answer"].rstrip(".")
        return " ".join([word] * rng.randint(6, 10)) + "."
    return q["wrong"]


def _msg(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


# Each group says what it prefers in a system message, so the preference is a function of
# the prompt: the same question can be judged both ways and still be learnable.
GROUP_SYSTEM = {
    "concise": "The user wants the bare answer, nothing more.",
    "detailed": "The user wants the answer and one sentence that explains it.",
}


def _prompt(q: dict, group: str) -> list[dict]:
    return _msg("system", GROUP_SYSTEM[group]) + _msg("user", q["question"])


def build(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    questions = _questions(rng)
    rng.shuffle(questions)
    annotators = ["ann1", "ann2", "ann3", "ann4"]
    preference, sft, prompts = [], [], []
    for i, q in enumerate(questions):
        group = "concise" if rng.random() < 0.6 else "detailed"
        other = "detailed" if group == "concise" else "concise"
        prompt = _prompt(q, group)
        kind = rng.choice(["evasive", "rambling", "repetitive", "wrong"])
        preference.append(
            dict(
                prompt=prompt,
                chosen=_msg("assistant", _styled(q, group)),
                rejected=_msg("assistant", _bad(q, kind, rng)),
                group=group,
                annotator=rng.choice(annotators),
                margin=2.0,
                rejected_kind=kind,
            )
        )
        if rng.random() < 0.5:
            preference.append(
                dict(
                    prompt=prompt,
                    chosen=_msg("assistant", _styled(q, group)),
                    rejected=_msg("assistant", _styled(q, other)),
                    group=group,
                    annotator=rng.choice(annotators),
                    margin=1.0,
                    rejected_kind="verbose" if group == "concise" else "terse",
                )
            )
        if i % 4 == 0:  # the other group judges the same question the other way round
            preference.append(
                dict(
                    prompt=_prompt(q, other),
                    chosen=_msg("assistant", _styled(q, other)),
                    rejected=_msg("assistant", _styled(q, group)),
                    group=other,
                    annotator=rng.choice(annotators),
                    margin=1.0,
                    rejected_kind="verbose" if other == "concise" else "terse",
                )
            )
        sft.append(
            dict(prompt=prompt, completion=_msg("assistant", _styled(q, group)), group=group)
        )
        prompts.append(dict(prompt=prompt, group=group, answer=q["key"]))
    rng.shuffle(preference)
    return {"preference": preference, "sft": sft, "prompt": prompts}


def write(out_dir: Path = OUT_DIR, seed: int = SEED) -> dict[str, Path]:
    from alignkit.data.demo import DEMO_FILES

    paths = {}
    for kind, rows in build(seed).items():
        path = Path(out_dir) / DEMO_FILES[kind]
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[kind] = path
    return paths


if __name__ == "__main__":
    for kind, path in write().items():
        print(f"{kind}: {path} ({path.stat().st_size} bytes)")
