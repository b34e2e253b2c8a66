"""`alignkit eval`: policies compared on held-out prompts, as a table and a JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from alignkit.errors import UserError
from alignkit.eval.compare import Policy, compare_policies
from alignkit.rollout.sampling import SamplingConfig

DEMO = "demo"


def parse_policies(specs: Sequence[str]) -> dict[str, str]:
    """`NAME=MODEL` or `MODEL` (named after itself) → {name: model}; names must differ."""
    policies: dict[str, str] = {}
    for spec in specs:
        name, _, model = spec.partition("=") if "=" in spec else (spec, "", spec)
        if not name or not model:
            raise UserError(f"--policy {spec!r}: expected NAME=MODEL or MODEL")
        if name in policies:
            raise UserError(f"--policy: the name {name!r} is given twice")
        policies[name] = model
    return policies


def judge_config(spec: str) -> dict[str, Any]:
    """`demo` → the demo task's rule-based judge; `gold:FILE` → the pipeline task's gold
    judge for the prompts in FILE; anything else names a Python function
    (`module:function` or `file.py:function`) that scores (prompts, responses)."""
    if spec == DEMO:
        return {"demo_judge": True}
    if spec.startswith("gold:"):
        return {"gold_judge": {"prompts": spec.removeprefix("gold:")}}
    return {"reward_functions": [spec]}


def run_eval(
    *,
    policies: Sequence[str],
    baselines: Sequence[str],
    prompts: str,
    judge: str = DEMO,
    reward_model: str | None = None,
    reference: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    interval: str = "bootstrap",
    seed: int = 0,
    output: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Load the models, compare them (:func:`~alignkit.eval.compare.compare_policies`),
    print the tables, and write the result to `output` when given."""
    from alignkit.data import load_dataset_records
    from alignkit.models import load_causal_lm
    from alignkit.rewards import build_reward
    from alignkit.train.common import dataset_path

    if max_new_tokens < 1 or batch_size < 1:
        raise UserError("--max-new-tokens and --batch-size must be at least 1")
    if interval not in ("wilson", "bootstrap"):
        raise UserError(f"--interval must be wilson or bootstrap, got {interval!r}")
    named = parse_policies(policies)
    baselines = list(baselines) or [next(iter(named))]
    missing = [b for b in baselines if b not in named]
    if missing:
        raise UserError(f"--baseline {missing[0]!r} is not one of the --policy names {list(named)}")
    records = load_dataset_records(dataset_path(prompts, "prompt"), "prompt")
    if limit is not None:
        records = records[:limit]
    if not records:
        raise UserError(f"no prompts in {prompts}")
    loaded = {name: Policy(*load_causal_lm(model)) for name, model in named.items()}
    tokenizer = loaded[baselines[0]].tokenizer
    judge_fn = build_reward(judge_config(judge), tokenizer=tokenizer)
    reward_fn = build_reward({"reward_model": reward_model}) if reward_model else None
    reference_model = None
    if reference != "none":
        if reference is None or reference in loaded:
            reference_model = loaded[reference or baselines[0]].model
        else:
            reference_model = load_causal_lm(reference)[0]
    result = compare_policies(
        loaded,
        records,
        judge=judge_fn,
        baselines=baselines,
        reward_fn=reward_fn,
        reference=reference_model,
        sampling=SamplingConfig(max_new_tokens=max_new_tokens),
        batch_size=batch_size,
        interval=interval,
        seed=seed,
    )
    result["policies"] = named
    console = console or Console()
    print_comparison(result, console)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        console.print(f"written: {output}")
    return result


def _number(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_comparison(result: dict[str, Any], console: Console) -> None:
    """The methods' figures, then gold and win rate per user group."""
    baseline = result["baselines"][0]
    table = Table(
        title=f"{result['prompts']} held-out prompts; win rate against {baseline} "
        f"(95% interval: {result['interval']})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    methods = result["methods"]
    with_reward = any(m.get("reward") is not None for m in methods.values())
    columns = ["policy", "gold", "win", "95%", "reward", "KL", "KL/tok", "words", "dist-2"]
    columns += ["evasive", "repeat"]
    for column in columns if with_reward else [c for c in columns if c != "reward"]:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, m in methods.items():
        cells = [name, _number(m["gold"]), _number(m["win_rate"], 2)]
        cells.append(f"{m['win_rate_low']:.2f}–{m['win_rate_high']:.2f}")
        if with_reward:
            cells.append(_number(m.get("reward"), 2))
        cells += [_number(m.get("kl"), 2), _number(m.get("kl_per_token"), 3)]
        cells += [_number(m["mean_length"], 1), _number(m["distinct_2"], 2)]
        cells += [_number(m["evasion_rate"], 2), _number(m["repetition_rate"], 2)]
        table.add_row(*cells)
    console.print(table)
    groups = sorted({g for m in result["methods"].values() for g in m["per_group"]})
    if not groups:
        return
    per_group = Table(title="per user group: gold / win rate", box=box.SIMPLE_HEAD)
    per_group.add_column("policy")
    for group in groups:
        per_group.add_column(group, justify="right")
    per_group.add_column("gap (gold)", justify="right")
    for name, m in result["methods"].items():
        cells = [
            f"{m['per_group'][g]['gold']:.3f} / {m['per_group'][g]['win_rate']:.2f}"
            if g in m["per_group"]
            else ""
            for g in groups
        ]
        gap = m.get("group_gap", {}).get("gold")
        per_group.add_row(name, *cells, _number(gap))
    console.print(per_group)
