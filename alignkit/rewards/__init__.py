"""Rewards for online RL: a reward function maps (prompts, responses) → `RewardOutput`.

Sources: a trained reward model (`RewardModelScorer`), ensembles of them (`RewardEnsemble`),
user Python functions (`PythonReward`), rule-based shaping against known hacks
(`LengthPenalty`, `RepetitionPenalty`, `EvasionPenalty`, `DiversityBonus`) and the demo
task's verifiable judge (`DemoJudge`); `CompositeReward` sums them with weights and
`RewardNormalizer` keeps the result on a steady scale. `build_reward` builds it from config.
"""

from alignkit.rewards.base import Prompt, RewardFunction, RewardOutput, prompt_text
from alignkit.rewards.builder import build_reward, build_reward_normalizer
from alignkit.rewards.combine import CompositeReward, RewardEnsemble
from alignkit.rewards.judge import DemoJudge, contains_answer
from alignkit.rewards.model import RewardModelScorer
from alignkit.rewards.normalize import RewardNormalizer
from alignkit.rewards.python import PythonReward, load_function
from alignkit.rewards.shaping import (
    DiversityBonus,
    EvasionPenalty,
    LengthPenalty,
    RepetitionPenalty,
)
from alignkit.rewards.text import (
    DEFAULT_EVASIVE_PHRASES,
    batch_novelty,
    distinct_n,
    is_evasive,
    length_in_words,
    ngrams,
    repeated_ngram_fraction,
    words,
)

__all__ = [
    "DEFAULT_EVASIVE_PHRASES",
    "CompositeReward",
    "DemoJudge",
    "DiversityBonus",
    "EvasionPenalty",
    "LengthPenalty",
    "Prompt",
    "PythonReward",
    "RepetitionPenalty",
    "RewardEnsemble",
    "RewardFunction",
    "RewardModelScorer",
    "RewardNormalizer",
    "RewardOutput",
    "batch_novelty",
    "build_reward",
    "build_reward_normalizer",
    "contains_answer",
    "distinct_n",
    "is_evasive",
    "length_in_words",
    "load_function",
    "ngrams",
    "prompt_text",
    "repeated_ngram_fraction",
    "words",
]
