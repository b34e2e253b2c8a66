import pytest

from alignkit.rewards.text import (
    batch_novelty,
    distinct_n,
    is_evasive,
    ngrams,
    repeated_ngram_fraction,
    words,
)


def test_words_lowercase_and_drop_punctuation():
    assert words("Madrid. It's twenty-four, OK?") == ["madrid", "it's", "twenty-four", "ok"]


def test_ngrams():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_repeated_ngram_fraction_by_hand():
    # bigrams: (paris, paris) ×3 → 1 distinct of 3
    assert repeated_ngram_fraction("Paris Paris Paris Paris", 2) == pytest.approx(2 / 3)
    # unigrams: the cat sat on the mat → 5 distinct of 6
    assert repeated_ngram_fraction("the cat sat on the mat", 1) == pytest.approx(1 / 6)
    assert repeated_ngram_fraction("the cat sat on the mat", 2) == 0.0
    assert repeated_ngram_fraction("Paris.", 2) == 0.0  # too short to repeat
    assert distinct_n("a b a b", 1) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't answer that.",
        "As an AI, I cannot provide an answer to this.",
        "I\u2019M NOT ABLE TO help",  # case and typographic apostrophe
        "That's not something I can answer.",
    ],
)
def test_is_evasive_default_phrases(text):
    assert is_evasive(text)


def test_is_evasive_negative_and_custom_list():
    assert not is_evasive("Paris. It is the capital of France.")
    assert is_evasive("No comment.", ["no comment"])
    assert not is_evasive("I can't answer", ["no comment"])


def test_batch_novelty():
    texts = ["the cat sat", "the cat sat", "a dog ran fast"]
    assert batch_novelty(texts, 2) == [0.0, 0.0, 1.0]
    # "the cat ran": (the, cat) is shared, (cat, ran) is new → 1/2
    assert batch_novelty(["the cat sat", "the cat ran"], 2) == [0.5, 0.5]
    assert batch_novelty(["x"], 2) == [0.0]
