"""Build the reward of an online run (PPO/GRPO) from its config section.

Keys (all optional, but at least one source of reward is needed)::

    reward_model: runs/rm            # a saved reward model folder → part "reward_model"
    reward_model_weight: 1.0
    ensemble: [runs/rm1, runs/rm2]   # reward-model ensemble → part "ensemble"
    ensemble_combine: mean           # mean | min | mean_minus_std
    ensemble_k: 1.0                  # k of mean − k·std
    ensemble_weight: 1.0
    reward_functions:                # user Python functions f(prompts, responses) -> list[float]
      - mymod:f                      # weight 1.0, part named after the function
      - {spec: path/to/file.py:g, weight: 0.5, name: format}
    shaping:                         # rule-based terms; each part is already weighted
      length: {weight: 0.1, target_tokens: 64, mode: linear, cap: 1.0}   # or target_words
      repetition: {weight: 1.0, n: 2}
      evasion: {weight: 0.5, phrases: ["i can't answer", ...]}
      diversity: {weight: 0.05, n: 2}
    demo_judge: {weight: 1.0}        # the demo task's rule-based judge (or `true`) → "gold"
    gold_judge: {prompts: FILE, weight: 1.0}   # the pipeline task's judge → "gold"
    batch_size: 8                    # reward-model scoring batch
    max_length: 512                  # reward-model input length (tokens)

    normalize: {clip: 5.0, subtract_mean: true, scale_by_std: true, momentum: null}
                                     # read by build_reward_normalizer, not build_reward

The result is a `CompositeReward` whose parts are named as above, so a rollout logs each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from alignkit.rewards.base import RewardFunction
from alignkit.rewards.combine import COMBINE_RULES, CompositeReward, RewardEnsemble
from alignkit.rewards.gold_judge import GoldJudge
from alignkit.rewards.judge import DemoJudge
from alignkit.rewards.model import RewardModelScorer
from alignkit.rewards.normalize import RewardNormalizer
from alignkit.rewards.python import PythonReward
from alignkit.rewards.shaping import (
    DiversityBonus,
    EvasionPenalty,
    LengthPenalty,
    RepetitionPenalty,
)

REWARD_KEYS = (
    "reward_model",
    "reward_model_weight",
    "ensemble",
    "ensemble_combine",
    "ensemble_k",
    "ensemble_weight",
    "reward_functions",
    "shaping",
    "demo_judge",
    "gold_judge",
    "batch_size",
    "max_length",
    "normalize",
)
SHAPING_KEYS = {
    "length": ("weight", "target_tokens", "target_words", "mode", "cap"),
    "repetition": ("weight", "n"),
    "evasion": ("weight", "phrases"),
    "diversity": ("weight", "n"),
}
NORMALIZE_KEYS = ("clip", "subtract_mean", "scale_by_std", "momentum", "eps")


def build_reward(
    config: Mapping[str, Any],
    *,
    tokenizer=None,
    load_scorer: Callable[..., RewardFunction] | None = None,
) -> CompositeReward:
    """A `CompositeReward` from a config mapping (keys in the module docstring).

    ``tokenizer`` counts tokens for ``shaping.length.target_tokens`` (the policy's tokenizer;
    without one, the reward model's is used). ``load_scorer(path, batch_size=, max_length=,
    name=)`` loads one reward model (default `RewardModelScorer.from_path`).
    """
    _check_keys("reward", config, REWARD_KEYS)
    load_scorer = load_scorer or RewardModelScorer.from_path
    batch_size = int(config.get("batch_size", 8))
    max_length = config.get("max_length")
    components: list[tuple[str, RewardFunction, float]] = []

    if config.get("reward_model"):
        scorer = load_scorer(
            str(config["reward_model"]), batch_size=batch_size, max_length=max_length
        )
        tokenizer = tokenizer or getattr(scorer, "tokenizer", None)
        components.append(("reward_model", scorer, float(config.get("reward_model_weight", 1.0))))

    if config.get("ensemble"):
        paths = config["ensemble"]
        if isinstance(paths, str) or not isinstance(paths, (list, tuple)):
            raise UserError("reward config 'ensemble' must be a list of reward model folders")
        combine = config.get("ensemble_combine", "mean")
        if combine not in COMBINE_RULES:
            raise UserError(
                f"reward config 'ensemble_combine' must be one of {', '.join(COMBINE_RULES)}, "
                f"got {combine!r}"
            )
        members = [
            load_scorer(str(p), batch_size=batch_size, max_length=max_length, name=f"member_{i}")
            for i, p in enumerate(paths)
        ]
        tokenizer = tokenizer or getattr(members[0], "tokenizer", None)
        ensemble = RewardEnsemble(members, combine, float(config.get("ensemble_k", 1.0)))
        components.append(("ensemble", ensemble, float(config.get("ensemble_weight", 1.0))))

    functions = config.get("reward_functions") or []
    if isinstance(functions, str):  # one spec written without the list brackets
        functions = [functions]
    for entry in functions:
        spec, weight, name = _function_entry(entry)
        function = PythonReward(spec, name=name)
        components.append((function.name, function, weight))

    shaping = config.get("shaping") or {}
    _check_keys("shaping", shaping, tuple(SHAPING_KEYS))
    for key, options in shaping.items():
        components.append((key, _shaping_term(key, options, tokenizer), 1.0))

    judge = config.get("demo_judge")
    if judge:
        options = {} if judge is True else dict(judge)
        _check_keys("demo_judge", options, ("weight", "max_words", "max_repeated"))
        weight = float(options.pop("weight", 1.0))
        components.append(("gold", DemoJudge.from_demo_data(**options), weight))

    gold = config.get("gold_judge")
    if gold:
        if not isinstance(gold, Mapping) or "prompts" not in gold:
            raise UserError("reward config 'gold_judge' needs {prompts: FILE}, the task's prompts")
        _check_keys("gold_judge", gold, ("prompts", "weight"))
        if not Path(gold["prompts"]).is_file():
            raise UserError(f"gold_judge prompts not found: {gold['prompts']}")
        components.append(
            ("gold", GoldJudge.from_file(gold["prompts"]), float(gold.get("weight", 1.0)))
        )

    if not components:
        raise UserError(
            "reward config has no reward: set reward_model, ensemble, reward_functions, "
            "shaping, demo_judge or gold_judge"
        )
    names = [name for name, _, _ in components]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"reward config: two rewards are named {', '.join(clashes)}; set 'name'")
    return CompositeReward(components)


def build_reward_normalizer(config: Mapping[str, Any]) -> RewardNormalizer | None:
    """The `RewardNormalizer` of the config's ``normalize`` key (None when absent or false)."""
    options = config.get("normalize")
    if not options:
        return None
    options = {} if options is True else dict(options)
    _check_keys("normalize", options, NORMALIZE_KEYS)
    try:
        return RewardNormalizer(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"reward config 'normalize': {exc}") from exc


def _function_entry(entry: Any) -> tuple[str, float, str | None]:
    if isinstance(entry, str):
        return entry, 1.0, None
    if isinstance(entry, Mapping) and "spec" in entry:
        _check_keys("reward_functions entry", entry, ("spec", "weight", "name"))
        return str(entry["spec"]), float(entry.get("weight", 1.0)), entry.get("name")
    raise UserError(
        f"reward_functions entries are 'module:function' or {{spec, weight, name}}, got {entry!r}"
    )


def _shaping_term(key: str, options: Any, tokenizer) -> RewardFunction:
    if key not in SHAPING_KEYS:
        raise UserError(f"unknown shaping term '{key}'; expected one of {', '.join(SHAPING_KEYS)}")
    options = {} if options in (None, True) else dict(options)
    _check_keys(f"shaping.{key}", options, SHAPING_KEYS[key])
    try:
        if key == "length":
            return _length_term(options, tokenizer)
        if key == "repetition":
            return RepetitionPenalty(**options)
        if key == "evasion":
            return EvasionPenalty(**options)
        return DiversityBonus(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"shaping.{key}: {exc}") from exc


def _length_term(options: dict[str, Any], tokenizer) -> LengthPenalty:
    has_tokens, has_words = "target_tokens" in options, "target_words" in options
    if has_tokens == has_words:
        raise ValueError("set exactly one of target_tokens or target_words")
    if has_tokens and tokenizer is None:
        raise ValueError("target_tokens needs a tokenizer (a reward model's or the policy's)")
    target = options.pop("target_tokens") if has_tokens else options.pop("target_words")
    unit = "tokens" if has_tokens else "words"
    return LengthPenalty(int(target), unit=unit, tokenizer=tokenizer, **options)


def _check_keys(section: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    if not isinstance(options, Mapping):
        raise UserError(f"{section} config must be a mapping, got {type(options).__name__}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown key(s) in {section} config: {', '.join(unknown)}; "
            f"expected {', '.join(allowed)}"
        )
