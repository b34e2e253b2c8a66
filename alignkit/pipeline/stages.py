"""The pipeline's stages, each a plain function of the pipeline: it reads the folders of
the stages before it and writes its own (see :mod:`alignkit.pipeline.run`)."""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any

from alignkit.pipeline.run import read_jsonl, write_jsonl

if TYPE_CHECKING:
    from alignkit.pipeline.run import Pipeline

SAMPLING_ROWS = 64  # rows sampled (and evaluated) at once: the cost per row falls up to here


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _judge(p: Pipeline):
    from alignkit.rewards.gold_judge import GoldJudge

    return GoldJudge.from_file(p.folder("task") / "all.jsonl")


def _gold_section(p: Pipeline) -> dict[str, Any]:
    return {"gold_judge": {"prompts": str(p.folder("task") / "all.jsonl")}}


def _model(p: Pipeline, stage: str) -> str:
    return str(p.folder(stage) / "run" / "model")


# ----------------------------------------------------------------------------- 1. task


def stage_task(p: Pipeline) -> dict[str, Any]:
    from alignkit.pipeline.task import build_task, split_task

    prompts = build_task(arithmetic=p.cfg.arithmetic, seed=2026 + p.cfg.seed)
    train, held_out = split_task(prompts, p.cfg.held_out)
    write_jsonl(p.folder("task") / "train.jsonl", [t.record() for t in train])
    write_jsonl(p.folder("task") / "heldout.jsonl", [t.record() for t in held_out])
    write_jsonl(p.folder("task") / "all.jsonl", [t.record() for t in prompts])
    return {"train": len(train), "held_out": len(held_out)}


# ----------------------------------------------------------------------------- 2. feedback


def _sample_answers(p: Pipeline, rows: list[dict], k: int) -> list[list[str]]:
    """`k` answers per prompt from the base policy (temperature `feedback_temperature`):
    the first k − k // 2 to the prompt as the user asked it, the other k // 2 written as a
    labeller's example would be (`pipeline.task`): the group's writing hint in the system
    message and the answer opened in the group's shape ("1. First," for the steps group).
    The people comparing them then see answers of the shape each group asked for beside
    the base model's own."""
    from tqdm.auto import tqdm

    from alignkit.models import load_causal_lm
    from alignkit.rollout.llama_step import frozen_weights
    from alignkit.rollout.sampling import SamplingConfig, sample

    model, tokenizer = load_causal_lm(p.cfg.model, seed=p.cfg.seed)
    config = SamplingConfig(
        max_new_tokens=p.cfg.max_new_tokens,
        temperature=p.cfg.feedback_temperature,
        dtype=p.cfg.feedback_dtype,
    )
    written = k // 2
    asked = k - written
    size = max(1, SAMPLING_ROWS // k)  # prompts per batch
    answers: list[list[str]] = []
    with frozen_weights(model):
        for start in tqdm(range(0, len(rows), size), desc="sampling answers"):
            chunk = rows[start : start + size]
            # each prompt twice, as asked and as a writer would answer it: one prefill,
            # then `asked` samples of the first kind and `written` of the second a prompt
            prompts = [r["prompt"] for r in chunk] + [r["hinted_prompt"] for r in chunk]
            starts = [""] * len(chunk) + [r["answer_start"] for r in chunk]
            texts = sample(
                model,
                tokenizer,
                prompts,
                config,
                num_samples=max(asked, written),
                seed=p.cfg.seed + start,
                response_starts=starts,
            ).texts
            g = max(asked, written)
            for i, row in enumerate(chunk):
                own = texts[i * g : i * g + asked]
                hinted = texts[(len(chunk) + i) * g : (len(chunk) + i) * g + written]
                opening = row["answer_start"]
                answers.append(own + [_joined(opening, t) for t in hinted])
    return answers


def _joined(opening: str, text: str) -> str:
    """A response that was made to open with `opening`, as one text."""
    if not opening:
        return text
    return opening + ("" if text[:1].isspace() or not text else " ") + text


def _answer_pairs(row: dict[str, Any]) -> list[tuple[int, int]]:
    """Every pair of a sampled prompt's distinct non-empty answers, as indices into its
    answers (the first time each text was sampled): with 4 answers, 6 pairs. Ranking K
    answers by comparing every pair is how InstructGPT's labellers worked; one sampling pass
    gives C(K, 2) comparisons instead of K / 2."""
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(row["answers"]):
        if answer.strip():
            first_seen.setdefault(answer.strip(), i)
    return list(itertools.combinations(first_seen.values(), 2))


def best_against_worst(
    decided: dict[tuple[int, int], str],
) -> tuple[int, int] | None:
    """One prompt's answers ranked by their wins in its labelled pairs (``decided`` maps an
    answer pair (a, b) to the winner "a" or "b"): (the answer with the most wins, the one
    with the fewest), or None when no answer won more often than another. Among answers
    with equal wins the earlier sampled is ranked higher. DPO learns most per step from the
    pair the labels separate most."""
    wins: dict[int, int] = {}
    for (a, b), choice in decided.items():
        wins.setdefault(a, 0)
        wins.setdefault(b, 0)
        wins[a if choice == "a" else b] += 1
    if not wins:
        return None
    order = sorted(wins, key=lambda i: (-wins[i], i))
    best, worst = order[0], order[-1]
    return (best, worst) if wins[best] > wins[worst] else None


def _pair_row(row: dict[str, Any], chosen: int, rejected: int, annotator: str) -> dict[str, Any]:
    return {
        "prompt": row["prompt"],
        "chosen": _assistant(row["answers"][chosen]),
        "rejected": _assistant(row["answers"][rejected]),
        "group": row["group"],
        "annotator": annotator,
    }


def stage_feedback(p: Pipeline) -> dict[str, Any]:
    from alignkit.feedback.agreement import agreement_summary
    from alignkit.feedback.consensus import consensus
    from alignkit.feedback.simulated import DEFAULT_PANEL, PairItem, simulate_labels
    from alignkit.rewards.text import length_in_words

    judge, out = _judge(p), p.folder("feedback")
    samples = {}
    per_prompt = {"train": p.cfg.samples_per_prompt, "heldout": p.cfg.heldout_samples}
    for split in ("train", "heldout"):
        rows = read_jsonl(p.folder("task") / f"{split}.jsonl")
        answers = _sample_answers(p, rows, per_prompt[split])
        gold = [
            judge([r["prompt"]] * len(a), a).scores.tolist()
            for r, a in zip(rows, answers, strict=True)
        ]
        k = per_prompt[split]
        samples[split] = [
            {
                "prompt": r["prompt"],
                "group": r["group"],
                "answers": a,
                "gold": g,
                "written": [i >= k - k // 2 for i in range(k)],  # hint and opening given
            }
            for r, a, g in zip(rows, answers, gold, strict=True)
        ]
        write_jsonl(out / f"samples_{split}.jsonl", samples[split])

    # every pair of each prompt's distinct answers, labelled by the simulated panel
    pairs: dict[str, tuple[int, int, int]] = {}  # item -> (prompt, answer a, answer b)
    items = []
    for i, row in enumerate(samples["train"]):
        for a, b in _answer_pairs(row):
            item = f"{i}-{a}-{b}"
            pairs[item] = (i, a, b)
            text_a, text_b = row["answers"][a], row["answers"][b]
            items.append(
                PairItem(
                    item,
                    row["gold"][a],
                    row["gold"][b],
                    length_in_words(text_a),
                    length_in_words(text_b),
                )
            )
    labels = simulate_labels(items, DEFAULT_PANEL, overlap=p.cfg.overlap, seed=p.cfg.seed)
    write_jsonl(out / "labels.jsonl", [vars(label) for label in labels])
    lengths = {it.item: (it.length_a, it.length_b) for it in items}
    agreement = agreement_summary(labels, lengths=lengths)
    (out / "agreement.json").write_text(json.dumps(agreement, indent=1), encoding="utf-8")
    drop = agreement["flagged"] if p.cfg.drop_flagged else []
    decided = consensus(labels, drop=drop)

    # the reward model learns from every decided pair; DPO from each prompt's best answer
    # against its worst, by the labels' wins
    consensus_rows, by_prompt = [], {}
    for item, choice in decided.items():
        i, a, b = pairs[item]
        chosen, rejected = (a, b) if choice == "a" else (b, a)
        consensus_rows.append(_pair_row(samples["train"][i], chosen, rejected, "consensus"))
        by_prompt.setdefault(i, {})[(a, b)] = choice
    write_jsonl(out / "pairs.jsonl", consensus_rows)
    extremes = []
    for i, prompt_pairs in by_prompt.items():
        ranked = best_against_worst(prompt_pairs)
        if ranked is not None:
            extremes.append(_pair_row(samples["train"][i], *ranked, "consensus"))
    write_jsonl(out / "pairs_best_worst.jsonl", extremes)
    # held-out pairs, preferred by the gold judge: how the reward model is checked
    held_out_pairs = []
    for row in samples["heldout"]:
        for a, b in _answer_pairs(row):
            if row["gold"][a] != row["gold"][b]:
                chosen, rejected = (a, b) if row["gold"][a] > row["gold"][b] else (b, a)
                held_out_pairs.append(_pair_row(row, chosen, rejected, "gold"))
    write_jsonl(out / "heldout_pairs.jsonl", held_out_pairs)
    truth = {
        it.item: "a" if it.gold_a > it.gold_b else "b" for it in items if it.gold_a != it.gold_b
    }
    agree = [decided[i] == truth[i] for i in decided if i in truth]
    return {
        "labels": len(labels),
        "pairs": len(decided),
        "best_worst_pairs": len(extremes),
        "heldout_pairs": len(held_out_pairs),
        "flagged": agreement["flagged"],
        "fleiss_kappa": agreement["fleiss_kappa"],
        "krippendorff_alpha": agreement["krippendorff_alpha"],
        "consensus_agrees_with_gold": sum(agree) / len(agree) if agree else None,
    }


# ----------------------------------------------------------------------------- 3–4. sft, rm


def stage_sft(p: Pipeline) -> dict[str, Any]:
    import random

    from alignkit.train.sft import SFTConfig, SFTTrainer

    rows = read_jsonl(p.folder("feedback") / "samples_train.jsonl")
    # demonstrations are costlier to write than comparisons: `demonstrations` is the share
    # of train prompts that has one (InstructGPT: 13k demonstration prompts, 33k compared)
    written = set(
        random.Random(p.cfg.seed).sample(range(len(rows)), round(p.cfg.demonstrations * len(rows)))
    )
    demos = []
    for index, row in enumerate(rows):
        if index not in written:
            continue
        best = max(range(len(row["answers"])), key=lambda i: row["gold"][i])
        if row["answers"][best].strip():
            demos.append(
                {
                    "prompt": row["prompt"],
                    "completion": _assistant(row["answers"][best]),
                    "group": row["group"],
                    "gold": row["gold"][best],
                }
            )
    data = write_jsonl(p.folder("sft") / "demonstrations.jsonl", demos)
    cfg = p.trainer_config(
        SFTConfig, "sft", model=p.cfg.model, dataset=str(data), eval_fraction=0.0
    )
    result = SFTTrainer(cfg).train()
    p.finish_trainer("sft")
    return {
        "demonstrations": len(demos),
        "demo_gold": sum(d["gold"] for d in demos) / len(demos),
        "steps": result.steps,
        "model": str(result.model_dir),
    }


def stage_rm(p: Pipeline) -> dict[str, Any]:
    from alignkit.train.reward import RewardConfig, RewardTrainer

    cfg = p.trainer_config(
        RewardConfig,
        "rm",
        model=_model(p, "sft"),
        dataset=str(p.folder("feedback") / "pairs.jsonl"),
        eval_dataset=str(p.folder("feedback") / "heldout_pairs.jsonl"),
        center_rewards_coefficient=0.01,
    )
    result = RewardTrainer(cfg).train()
    p.finish_trainer("rm")
    return {
        "steps": result.steps,
        "heldout_accuracy": result.eval_metrics.get("eval_accuracy"),
        "model": str(result.model_dir),
    }


# ----------------------------------------------------------------------------- 5. policies


def stage_dpo(p: Pipeline) -> dict[str, Any]:
    from alignkit.train.dpo import DPOConfig, DPOTrainer

    pairs = p.folder("feedback") / "pairs_best_worst.jsonl"
    cfg = p.trainer_config(
        DPOConfig, "dpo", model=_model(p, "sft"), dataset=str(pairs), eval_fraction=0.0
    )
    result = DPOTrainer(cfg).train()
    p.finish_trainer("dpo")
    return {"steps": result.steps, "model": str(result.model_dir)}


SHAPING = {"shaping": {"evasion": {"weight": 0.5}}}  # the seeds' penalty for refusing


def _online_summary(p: Pipeline, stage: str, result: Any) -> dict[str, Any]:
    p.finish_trainer(stage)
    return {
        "iterations": result.steps,
        "model": str(result.model_dir),
        "rollbacks": result.rollbacks,
    }


def _online_common(p: Pipeline) -> dict[str, Any]:
    return {
        "model": _model(p, "sft"),
        "dataset": str(p.folder("task") / "train.jsonl"),
        "eval_fraction": 0.0,
        "max_new_tokens": p.cfg.max_new_tokens,
        "gold_reward": _gold_section(p),
        "rollouts_every": 5,
    }


def stage_ppo(p: Pipeline) -> dict[str, Any]:
    from alignkit.train.ppo import PPOConfig, PPOTrainer

    cfg = p.trainer_config(
        PPOConfig,
        "ppo",
        reward_model=_model(p, "rm"),
        reward=SHAPING,
        kl_coef=0.05,
        kl_target=4.0,
        kl_horizon=2000,
        ppo_epochs=1,
        num_minibatches=1,
        **_online_common(p),
    )
    return _online_summary(p, "ppo", PPOTrainer(cfg).train())


def stage_grpo(p: Pipeline) -> dict[str, Any]:
    from alignkit.train.grpo import GRPOConfig, GRPOTrainer

    cfg = p.trainer_config(
        GRPOConfig,
        "grpo",
        reward_model=_model(p, "rm"),
        reward=SHAPING,
        kl_coef=0.04,
        num_generations=4,
        **_online_common(p),
    )
    return _online_summary(p, "grpo", GRPOTrainer(cfg).train())


# ----------------------------------------------------------------------------- 6. hack


def stage_hack(p: Pipeline) -> dict[str, Any]:
    """GRPO against a deliberately flawed proxy — the reward model plus a term that pays for
    length (`pipeline.proxy`), the length-loving annotator's taste — with a small β, while
    the guard watches the gold judge against the proxy and the answers' length."""
    from alignkit.train.grpo import GRPOConfig, GRPOTrainer

    proxy = {
        "reward_model": _model(p, "rm"),
        "reward_functions": [{"spec": "alignkit.pipeline.proxy:pays_for_length", "weight": 4.0}],
    }
    guard = {
        "policy": "rollback",
        "max_rollbacks": 2,
        "rollback_beta_factor": 10.0,
        "detectors": {
            "proxy_gold_divergence": {"window_steps": 6, "min_points": 4, "t_threshold": 1.5},
            "length_drift": {
                "metric": "completions/mean_words",
                "max_relative_change": 0.4,
                "baseline_steps": 2,
            },
        },
    }
    cfg = p.trainer_config(
        GRPOConfig,
        "hack",
        reward=proxy,
        kl_coef=0.001,
        num_generations=4,
        guard=guard,
        save_every=1,  # rollback needs good checkpoints: the one before the drift
        keep_last_checkpoints=4,
        **_online_common(p),
    )
    result = GRPOTrainer(cfg).train()
    p.finish_trainer("hack")
    events = read_jsonl(p.folder("hack") / "run" / "events.jsonl")
    return {
        "proxy": "reward model + 4 × min(1, words / 60)",
        "iterations": result.steps,
        "rollbacks": result.rollbacks,
        "guard_events": [e for e in events if e["event"] in ("guard", "rollback", "stop")],
        "model": str(result.model_dir),
    }


# ----------------------------------------------------------------------------- 7–8. eval, report


def stage_eval(p: Pipeline) -> dict[str, Any]:
    from alignkit.data import load_dataset_records
    from alignkit.eval.compare import Policy, compare_policies
    from alignkit.models import load_causal_lm
    from alignkit.rewards import build_reward
    from alignkit.rollout.sampling import SamplingConfig

    prompts = load_dataset_records(str(p.folder("task") / "heldout.jsonl"), "prompt")
    named = {"base": p.cfg.model, "sft": _model(p, "sft")}
    for stage in ("dpo", "ppo", "grpo", "hack"):
        if p.done(stage) is not None:
            named[stage] = _model(p, stage)
    policies = {
        name: Policy(*load_causal_lm(path, seed=p.cfg.seed)) for name, path in named.items()
    }
    result = compare_policies(
        policies,
        prompts,
        judge=_judge(p),
        baselines=["sft", "base"],
        reward_fn=build_reward({"reward_model": _model(p, "rm")}) if p.done("rm") else None,
        reference=policies["sft"].model,
        sampling=SamplingConfig(max_new_tokens=p.cfg.max_new_tokens),
        batch_size=SAMPLING_ROWS,
        seed=p.cfg.seed,
    )
    result["policies"] = named
    (p.folder("eval") / "eval.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return {
        name: {k: m[k] for k in ("gold", "win_rate", "win_rate_low", "win_rate_high")}
        for name, m in result["methods"].items()
    }


def stage_report(p: Pipeline) -> dict[str, Any]:
    from alignkit.pipeline.report import write_report

    return write_report(p)
