"""The pipeline's demo task: everyday, factual and "explain it to a five-year-old"
questions, asked by two user groups that want different answers.

* ``plain``: a short, plain answer (at most 25 words, no list of steps);
* ``steps``: a step-by-step explanation (25 to 90 words, with its steps marked).

Every question is asked by both groups, so what is a good answer follows from who asks (the
group's instruction is the prompt's system message). Factual questions carry a reference
answer a rule can check; the others carry topic words an on-topic answer uses. The gold
judge (:mod:`alignkit.rewards.gold_judge`) scores answers from these; it stands in for the
people of the seeds and is watched, never optimised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEED = 2026


@dataclass(frozen=True)
class GroupStyle:
    """What one user group wants."""

    instruction: str  # the system message its prompts open with
    min_words: int
    max_words: int
    wants_steps: bool
    # how a writer would start an answer for this group: candidate answers are also
    # sampled with the hint in the system message and the answer opened with `start`, as a
    # labeller's example answer would be written; the policies never see either
    hint: str = ""
    start: str = ""


GROUPS: dict[str, GroupStyle] = {
    "plain": GroupStyle(
        "The user wants a short, plain answer, in a sentence or two.",
        1,
        25,
        False,
        hint="Reply in one short sentence of under 20 words. No list, no steps.",
    ),
    "steps": GroupStyle(
        "The user wants a step-by-step explanation: first, then, next, finally.",
        25,
        90,
        True,
        hint="Reply in three or four numbered steps: First, Then, Next, Finally.",
        start="1. First,",
    ),
}


@dataclass(frozen=True)
class TaskPrompt:
    question: str
    group: str
    kind: str  # arithmetic | capital | fact | explain | everyday
    answer: str | None = None  # a reference answer a correct reply contains
    keywords: tuple[str, ...] = ()  # words an on-topic reply uses (any one of them)

    def record(self) -> dict:
        """The row of a prompt file: conversational prompt, group, and what the judge needs."""
        style = GROUPS[self.group]
        return {
            "prompt": [
                {"role": "system", "content": style.instruction},
                {"role": "user", "content": self.question},
            ],
            "group": self.group,
            "min_words": style.min_words,
            "max_words": style.max_words,
            "wants_steps": style.wants_steps,
            "kind": self.kind,
            "answer": self.answer,
            "keywords": list(self.keywords),
            "hinted_prompt": self.hinted_prompt(),
            "answer_start": GROUPS[self.group].start,
        }

    def hinted_prompt(self) -> list[dict[str, str]]:
        """The prompt with the group's writing hint added to its system message: how
        candidate answers in the group's style are sampled (never what a policy is asked)."""
        style = GROUPS[self.group]
        return [
            {"role": "system", "content": f"{style.instruction} {style.hint}"},
            {"role": "user", "content": self.question},
        ]


CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Canada", "Ottawa"), ("Portugal", "Lisbon"), ("Chile", "Santiago"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("England", "London"), ("Sweden", "Stockholm"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"),
]  # fmt: skip

# factual questions whose reference answer is one word a correct reply contains
FACTS = {
    "What colour is the sky on a clear day?": "blue",
    "What do bees make?": "honey",
    "What is the largest planet in our solar system?": "Jupiter",
    "What is frozen water called?": "ice",
    "Which planet is known as the red planet?": "Mars",
    "What is the largest ocean on Earth?": "Pacific",
    "What is the tallest animal in the world?": "giraffe",
    "Who wrote Romeo and Juliet?": "Shakespeare",
    "What language is spoken in Brazil?": "Portuguese",
    "Which metal is liquid at room temperature?": "mercury",
    "What is the hardest natural substance?": "diamond",
    "What do we call a baby cat?": "kitten",
    "What is the main ingredient of guacamole?": "avocado",
    "What force keeps us on the ground?": "gravity",
    "What is the star at the centre of our solar system?": "Sun",
    "Which animal is known as the king of the jungle?": "lion",
    "What do plants need from the sun to make food?": "light",
    "Which organ pumps blood around the body?": "heart",
    "What is the opposite of hot?": "cold",
    "What gas do we breathe in to live?": "oxygen",
}

EXPLAIN = {
    "photosynthesis": ("plant", "plants", "sun", "sunlight", "light", "leaf", "leaves", "food"),
    "rain": ("cloud", "clouds", "water", "drops", "sky", "fall"),
    "a rainbow": ("light", "sun", "colors", "colours", "rain", "drops"),
    "gravity": ("pull", "pulls", "fall", "earth", "ground", "down"),
    "why we sleep": ("rest", "body", "brain", "tired", "energy", "night"),
    "how a plane flies": ("wings", "air", "lift", "engine", "fly"),
    "the moon's phases": ("moon", "sun", "light", "shadow", "earth"),
    "what a computer does": ("instructions", "program", "numbers", "data", "screen"),
    "why the sea is salty": ("salt", "rivers", "rocks", "water", "minerals"),
    "how a seed grows": ("water", "soil", "roots", "sun", "plant", "grow"),
    "thunder": ("lightning", "sound", "air", "loud", "storm"),
    "the seasons": ("earth", "sun", "tilt", "summer", "winter"),
    "how bees make honey": ("bees", "flowers", "nectar", "hive", "honey"),
    "why leaves change colour in autumn": (
        "leaves",
        "green",
        "autumn",
        "fall",
        "colors",
        "colours",
        "tree",
    ),
    "what electricity is": ("energy", "power", "wires", "lights", "charge"),
    "how the heart works": ("blood", "pump", "pumps", "body", "beat"),
    "why we have day and night": ("earth", "sun", "spins", "turns", "night"),
    "what a volcano is": ("mountain", "lava", "hot", "rock", "erupt"),
    "how fish breathe": ("gills", "water", "oxygen", "fish"),
    "what germs are": ("tiny", "sick", "hands", "wash", "body"),
    "how magnets work": ("pull", "metal", "iron", "stick", "attract"),
    "why ice floats": ("water", "lighter", "ice", "float", "cold"),
    "how sound travels": ("air", "waves", "ears", "hear", "vibrate"),
    "what the internet is": ("computers", "connected", "information", "websites", "phone"),
}

EVERYDAY = {
    "How do I boil an egg?": ("water", "boil", "minutes", "pot", "egg"),
    "How do I make a cup of tea?": ("water", "boil", "tea", "bag", "cup", "minutes"),
    "How do I wash my hands properly?": ("soap", "water", "seconds", "rinse", "dry"),
    "How can I fall asleep faster?": ("screen", "dark", "bed", "routine", "relax", "caffeine"),
    "How do I plant a tomato?": ("soil", "water", "sun", "pot", "seed", "plant"),
    "How do I save money each month?": ("budget", "spend", "save", "account", "expenses"),
    "How do I change a flat bike tyre?": ("tube", "tyre", "tire", "pump", "wheel", "patch"),
    "How do I write a thank-you note?": ("thank", "dear", "note", "gift", "name"),
    "How do I keep a houseplant alive?": ("water", "light", "soil", "pot", "sun"),
    "How do I clean a frying pan?": ("water", "soap", "sponge", "hot", "dry"),
    "How do I prepare for a job interview?": ("research", "practice", "questions", "company"),
    "How do I cook rice?": ("water", "rice", "boil", "minutes", "simmer", "pot"),
    "How do I make a sandwich?": ("bread", "slice", "butter", "cheese", "filling"),
    "How do I tie my shoelaces?": ("loop", "laces", "knot", "pull", "bunny"),
    "How do I start running?": ("slowly", "shoes", "walk", "minutes", "week", "pace"),
    "How do I make pancakes?": ("flour", "eggs", "milk", "pan", "batter", "flip"),
    "How do I study for an exam?": ("notes", "schedule", "practice", "review", "break"),
    "How do I iron a shirt?": ("iron", "collar", "sleeves", "heat", "board"),
    "How do I make friends in a new city?": ("clubs", "join", "people", "events", "meet"),
    "How do I store bread so it stays fresh?": ("bag", "freeze", "freezer", "cool", "dry"),
    "How do I calm down when I feel stressed?": ("breathe", "breath", "walk", "relax", "slowly"),
    "How do I write a polite email to my boss?": ("subject", "dear", "short", "thank", "polite"),
    "How do I keep my phone battery healthy?": ("charge", "heat", "battery", "percent", "apps"),
    "How do I wash a wool sweater?": ("cold", "water", "gentle", "flat", "dry", "soap"),
}


def build_task(arithmetic: int = 20, seed: int = SEED) -> list[TaskPrompt]:
    """The task's prompts, each question once per group; deterministic in `seed`.

    With the defaults: 20 sums and differences, 24 capitals, 20 other facts, 24
    explanations and 24 everyday questions, each for both groups: 224 prompts. Arithmetic
    is a small share on purpose: a 135M model's sums are right or wrong by luck, and
    the gold judge's content check would then be mostly noise a preference cannot move."""
    rng = random.Random(seed)
    questions: list[tuple[str, str, str | None, tuple[str, ...]]] = []
    sums: dict[str, str] = {}
    while len(sums) < arithmetic:  # distinct questions
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        if rng.random() < 0.5:
            sums.setdefault(f"What is {a} + {b}?", str(a + b))
        else:
            a, b = max(a, b), min(a, b)
            sums.setdefault(f"What is {a} - {b}?", str(a - b))
    questions += [(q, "arithmetic", answer, ()) for q, answer in sums.items()]
    for country, capital in CAPITALS:
        questions.append((f"What is the capital of {country}?", "capital", capital, ()))
    for question, answer in FACTS.items():
        questions.append((question, "fact", answer, ()))
    for topic, words in EXPLAIN.items():
        questions.append((f"Explain {topic} to a five-year-old.", "explain", None, words))
    for question, words in EVERYDAY.items():
        questions.append((question, "everyday", None, words))
    prompts = [
        TaskPrompt(q, group, kind, answer, words)
        for q, kind, answer, words in questions
        for group in GROUPS
    ]
    rng.shuffle(prompts)
    return prompts


def split_task(
    prompts: list[TaskPrompt], held_out: float = 0.25, seed: int = SEED
) -> tuple[list[TaskPrompt], list[TaskPrompt]]:
    """Train and held-out prompts. A question's two groups stay on the same side, so a
    held-out question was never seen in training by either group."""
    questions = sorted({p.question for p in prompts})
    random.Random(seed + 1).shuffle(questions)
    test = set(questions[: round(held_out * len(questions))])
    return [p for p in prompts if p.question not in test], [
        p for p in prompts if p.question in test
    ]
