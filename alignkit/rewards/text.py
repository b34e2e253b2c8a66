"""Pure text checks shared by the shaping rewards, the guard and eval.

Words are lower-cased runs of letters/digits (an apostrophe or hyphen inside a word keeps it
whole), so "Madrid." and "madrid" are the same word and punctuation never forms an n-gram.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"\w+(?:['-]\w+)*")

# Refusals and evasions the seeds name as a reward hack ("always says I can't answer to avoid
# negative reward"), plus the demo data's evasive answers. Matched case-insensitively as
# substrings, with typographic apostrophes folded to "'".
DEFAULT_EVASIVE_PHRASES: tuple[str, ...] = (
    "i can't answer",
    "i cannot answer",
    "i can't help",
    "i cannot help",
    "i can't provide",
    "i cannot provide",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "as an ai",
    "i'd rather not",
    "i would rather not",
    "not something i can",
    "i'm sorry, but",
)


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (see the module docstring)."""
    return _WORD.findall(_fold(text))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens``, in order (none when there are fewer than n)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int = 1) -> float:
    """distinct-n (Li et al. 2016): #unique n-grams / #n-grams of the text's words.

    1.0 when nothing repeats; 1.0 as well for a text too short to have an n-gram (nothing
    in it repeats).
    """
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_fraction(text: str, n: int = 2) -> float:
    """Fraction of the text's word n-grams that repeat an earlier one: 1 − distinct-n.

    "paris paris paris paris" with n=2 has three bigrams, all ("paris", "paris"): 2/3.
    In [0, 1); 0.0 for a text with fewer than n words.
    """
    return 1.0 - distinct_n(text, n)


def is_evasive(text: str, phrases: Iterable[str] = DEFAULT_EVASIVE_PHRASES) -> bool:
    """True if ``text`` contains any of ``phrases`` (case-insensitive, apostrophes folded)."""
    folded = _fold(text)
    return any(_fold(p) in folded for p in phrases)


def length_in_words(text: str) -> int:
    return len(words(text))


def batch_novelty(texts: Sequence[str], n: int = 2) -> list[float]:
    """Per text, the fraction of its distinct n-grams that no OTHER text of the batch contains.

    Identical responses get 0.0, responses sharing nothing get 1.0; a text without an n-gram
    gets 0.0 (it adds nothing new). Counting each text's n-grams once means a text repeating
    itself does not look novel against the others.
    """
    sets = [set(ngrams(words(t), n)) for t in texts]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for grams in sets:
        document_frequency.update(grams)
    return [
        sum(document_frequency[g] == 1 for g in grams) / len(grams) if grams else 0.0
        for grams in sets
    ]


def _fold(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")
