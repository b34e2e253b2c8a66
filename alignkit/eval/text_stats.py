"""What a set of answers looks like, apart from how good it is: length, diversity, and the
rates of the two classic reward hacks, evasion and repetition."""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.rewards.text import is_evasive, length_in_words, ngrams, repeated_ngram_fraction
from alignkit.rewards.text import words as text_words


def distinct_n_over(texts: Sequence[str], n: int) -> float:
    """Corpus distinct-n (Li et al. 2016): unique word n-grams over all `texts` / all their
    n-grams. Low when the answers repeat themselves or each other (mode collapse); 1.0 when
    nothing repeats (and for texts with no n-gram at all)."""
    grams = [g for t in texts for g in ngrams(text_words(t), n)]
    return len(set(grams)) / len(grams) if grams else 1.0


def text_figures(texts: Sequence[str]) -> dict[str, float]:
    """`mean_length` (words), `distinct_1`, `distinct_2`, `evasion_rate` (answers with a
    refusal phrase) and `repetition_rate` (mean fraction of repeated word bigrams)."""
    if not texts:
        raise ValueError("no answers to describe")
    n = len(texts)
    return {
        "mean_length": sum(length_in_words(t) for t in texts) / n,
        "distinct_1": distinct_n_over(texts, 1),
        "distinct_2": distinct_n_over(texts, 2),
        "evasion_rate": sum(is_evasive(t) for t in texts) / n,
        "repetition_rate": sum(repeated_ngram_fraction(t) for t in texts) / n,
    }
