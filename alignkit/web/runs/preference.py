"""Preference runs (DPO) in the inspector: chosen and rejected side by side, each token
coloured by log π_θ(y_t) − log π_ref(y_t).

A DPO run logs no tokens (its data are fixed pairs), so the figures are computed on
demand: the policy is the run's ``model/`` folder, the reference is the model its config
names, and the pairs are its dataset's. Only what lies inside the runs root (or the
built-in names: the demo data, the tiny and default models) is loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from alignkit.data.records import PreferenceExample, load_dataset_records
from alignkit.data.tokenization import PreferenceCollator, tokenize_preference
from alignkit.web.runs.folders import OutsideRuns, inside, read_config, run_folder
from alignkit.web.runs.rollouts import prompt_text

MAX_PAIRS = 200
MAX_TOKENS = 512  # each of prompt + response, as in training's default max_length
_CACHE: OrderedDict[tuple[str, int], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2  # a policy and its reference


def _within(root: Path, location: str) -> Path:
    """A local path the config names, refused unless it lies inside the runs root."""
    path = Path(location).expanduser()
    base = root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        raise OutsideRuns(f"{location} lies outside --runs; the dashboard reads nothing outside it")
    return inside(root, resolved.relative_to(base).as_posix())


def dataset_file(root: Path, config: dict[str, Any]) -> str:
    from alignkit.data import demo_path

    name = config.get("eval_dataset") or config.get("dataset")
    if not name:
        raise OutsideRuns("the run's config names no dataset")
    if name == "demo":
        return str(demo_path("preference"))
    return str(_within(root, name))


def model_location(root: Path, name: str) -> str:
    """Built-in model names pass; a local folder or file must lie inside the runs root."""
    from alignkit.models.loading import DEFAULT_MODEL
    from alignkit.models.tiny import TINY_MODEL_NAME

    if name in (TINY_MODEL_NAME, DEFAULT_MODEL):
        return name
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return str(_within(root, name))
    raise OutsideRuns(f"the reference model {name!r} is not a local folder inside --runs")


def pairs(root: Path, run_id: str) -> list[PreferenceExample]:
    config = read_config(run_folder(root, run_id))
    return load_dataset_records(dataset_file(root, config), "preference")[:MAX_PAIRS]


def pair_list(root: Path, run_id: str) -> dict[str, Any]:
    return {
        "pairs": [
            {
                "index": i,
                "prompt": prompt_text(p.prompt),
                "chosen": prompt_text(p.chosen),
                "rejected": prompt_text(p.rejected),
                "group": p.group,
            }
            for i, p in enumerate(pairs(root, run_id))
        ]
    }


def _load(location: str, seed: int):
    from alignkit.models.loading import load_causal_lm

    key = (location, seed)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    model, tokenizer = load_causal_lm(location, seed=seed)
    model.eval()
    with _CACHE_LOCK:
        _CACHE[key] = (model, tokenizer)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model, tokenizer


@torch.no_grad()
def _token_logps(model, tokenizer, pair: PreferenceExample) -> list[list[tuple[str, float]]]:
    """[(token text, log π(token))] of the chosen and of the rejected response."""
    from alignkit.models.scoring import labelled_token_logprobs

    feature = tokenize_preference(pair, tokenizer, MAX_TOKENS * 2, MAX_TOKENS)
    batch = PreferenceCollator(tokenizer.pad_token_id)([feature])
    logps, mask = labelled_token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    rows = []
    for row in range(2):
        positions = mask[row].nonzero().squeeze(1).tolist()
        ids = batch["labels"][row, 1:][positions].tolist()
        rows.append(
            [
                (tokenizer.decode([t]), float(logps[row, p]))
                for t, p in zip(ids, positions, strict=True)
            ]
        )
    return rows


def pair_logratios(root: Path, run_id: str, index: int) -> dict[str, Any]:
    """Per token of chosen and rejected: log π_θ, log π_ref and their difference, with the
    sums (the sequence log-ratios whose difference, times β, is DPO's margin)."""
    folder = run_folder(root, run_id)
    config = read_config(folder)
    all_pairs = pairs(root, run_id)
    if not 0 <= index < len(all_pairs):
        raise OutsideRuns(f"no pair {index} in the run's data")
    if not (folder / "model" / "config.json").is_file():
        raise OutsideRuns("the run has no model/ folder yet (it is written when training ends)")
    seed = int(config.get("seed", 0))
    policy = _load(str(inside(root, f"{run_id}/model")), seed)
    reference = _load(model_location(root, str(config.get("model", ""))), seed)
    pair = all_pairs[index]
    sides = {}
    for side, policy_row, ref_row in zip(
        ("chosen", "rejected"),
        _token_logps(*policy, pair),
        _token_logps(*reference, pair),
        strict=True,
    ):
        tokens = [
            {"token": tok, "logp": lp, "ref_logp": rlp, "logratio": lp - rlp}
            for (tok, lp), (_, rlp) in zip(policy_row, ref_row, strict=True)
        ]
        sides[side] = {
            "tokens": tokens,
            "logp": sum(t["logp"] for t in tokens),
            "ref_logp": sum(t["ref_logp"] for t in tokens),
            "logratio": sum(t["logratio"] for t in tokens),
        }
    beta = float(config.get("beta", 0.1))
    margin = sides["chosen"]["logratio"] - sides["rejected"]["logratio"]
    return {
        "index": index,
        "prompt": prompt_text(pair.prompt),
        "beta": beta,
        "implicit_reward_margin": beta * margin,
        **sides,
    }
