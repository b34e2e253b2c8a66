"""Reward-model training: Bradley–Terry on preference pairs.

P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); the loss is −log σ(r_w − r_l − m) with an optional
per-pair margin m (Llama 2), plus an optional centering term c·E[(r_w + r_l)²] that keeps the
mean reward near 0 (Eisenstein et al. 2023), so PPO's reward scale does not drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from alignkit.data import PreferenceCollator
from alignkit.errors import UserError
from alignkit.models.heads import (
    ScalarHeadModel,
    load_scalar_model,
    score_from_trunk,
    trunk_states,
)
from alignkit.ops.losses import (
    bradley_terry_loss,
    preference_accuracy,
    reward_centering_penalty,
)
from alignkit.options import option
from alignkit.train.common import evaluate_in_batches, load_train_eval, tokenize
from alignkit.train.engine import Engine, FitResult
from alignkit.train.train_config import TrainConfig


@dataclass
class RewardConfig(TrainConfig):
    """Options for `alignkit rm`."""

    learning_rate: float = option(2e-5, "Peak learning rate.", gt=0)
    use_margin: bool = option(True, "Subtract the data's `margin` column inside the sigmoid.")
    center_rewards_coefficient: float = option(
        0.0, "Weight of E[(r_w + r_l)²], pulling the mean reward toward 0 (0 = off).", min=0
    )
    frozen_layers: int = option(
        0,
        "Keep the embeddings and the bottom N decoder layers fixed. Their output for each "
        "distinct sequence is computed once, and every step runs and trains only the layers "
        "above and the head: several epochs for about the price of one forward pass. A step "
        "then takes every pair of `batch_size` prompts, each distinct answer scored once "
        "(0 = train every weight, `batch_size` pairs a step).",
        min=0,
    )


def pair_scores(model: ScalarHeadModel, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """r(x, y_w) and r(x, y_l) from one forward pass over the concatenated batch, each
    pair's prompt run through the network once where the model allows it."""
    prompts = batch.get("prompt_lengths")
    scores = model.score(
        batch["input_ids"],
        batch["attention_mask"],
        prompt_lengths=None if prompts is None else prompts.repeat(2),
    )
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def padded_states(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences' states [T_i, H] right-padded into [N, T, H], and their attention mask."""
    length = max(r.shape[0] for r in rows)
    states = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        states[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return states, mask


class TrunkPairCollator:
    """Batches pairs whose sequences' frozen-trunk states were computed once
    (:func:`~alignkit.models.heads.trunk_states`): `states` [2B, T, H] right-padded (the
    chosen rows first, then the rejected), `attention_mask`, margins and groups."""

    def __init__(self, states: list[torch.Tensor]):
        self.states = states

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [self.states[f["chosen"]] for f in features]
        rows += [self.states[f["rejected"]] for f in features]
        states, mask = padded_states(rows)
        margins = [f.get("margin") for f in features]
        return {
            "states": states,
            "attention_mask": mask,
            "margin": torch.tensor([m or 0.0 for m in margins], dtype=torch.float),
            "has_margin": torch.tensor([m is not None for m in margins], dtype=torch.bool),
            "group": [f.get("group") for f in features],
        }


class TrunkGroupCollator:
    """Batches prompts with all their pairs over frozen-trunk states: each distinct answer
    in the batch is run once however many pairs it is in (with K answers a prompt, C(K, 2)
    pairs cost K sequences). `states` [S, T, H] and `attention_mask` for the distinct
    sequences; `chosen` and `rejected` [P] index them; margins per pair."""

    def __init__(self, states: list[torch.Tensor]):
        self.states = states

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = [pair for f in features for pair in f["pairs"]]
        distinct = sorted({i for c, r, _ in pairs for i in (c, r)})
        row = {seq: n for n, seq in enumerate(distinct)}
        states, mask = padded_states([self.states[i] for i in distinct])
        margins = [m for _, _, m in pairs]
        return {
            "states": states,
            "attention_mask": mask,
            "chosen": torch.tensor([row[c] for c, _, _ in pairs]),
            "rejected": torch.tensor([row[r] for _, r, _ in pairs]),
            "margin": torch.tensor([m or 0.0 for m in margins], dtype=torch.float),
            "has_margin": torch.tensor([m is not None for m in margins], dtype=torch.bool),
        }


class TrunkCache:
    """The distinct sequences of some pairs and their frozen-trunk states, computed once."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, ...], int] = {}

    def key(self, ids: list[int]) -> int:
        return self.index.setdefault(tuple(ids), len(self.index))

    def states(self, model: ScalarHeadModel, layers: int) -> list[torch.Tensor]:
        return trunk_states(model, [list(ids) for ids in self.index], layers)


def trunk_features(
    model: ScalarHeadModel, train: list[dict[str, Any]], held_out: list[dict[str, Any]], layers: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[torch.Tensor]]:
    """Training pairs grouped by prompt (one feature a prompt, with its pairs as indices
    into the distinct sequences), held-out pairs as indices, and every distinct sequence's
    frozen-trunk states (an answer compared with several others is one sequence)."""
    cache = TrunkCache()
    by_prompt: dict[tuple[int, ...], dict[str, Any]] = {}
    for f in train:
        prompt = tuple(f["chosen_input_ids"][: f.get("prompt_length", 0)])
        entry = by_prompt.setdefault(prompt, {"pairs": [], "group": f.get("group")})
        pair = (cache.key(f["chosen_input_ids"]), cache.key(f["rejected_input_ids"]))
        entry["pairs"].append((*pair, f.get("margin")))
    pairs = [
        {
            "chosen": cache.key(f["chosen_input_ids"]),
            "rejected": cache.key(f["rejected_input_ids"]),
            "margin": f.get("margin"),
            "group": f.get("group"),
        }
        for f in held_out
    ]
    return list(by_prompt.values()), pairs, cache.states(model, layers)


def reward_batch_loss(
    model: ScalarHeadModel, batch: dict[str, Any], cfg: RewardConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry loss of one batch of pairs (chosen rows first, then rejected)."""
    if "states" in batch:  # the frozen trunk's output, computed once
        scores = score_from_trunk(
            model, batch["states"], batch["attention_mask"], cfg.frozen_layers
        )
        chosen, rejected = scores[batch["chosen"]], scores[batch["rejected"]]
    else:
        chosen, rejected = pair_scores(model, batch)
    margin = None
    if cfg.use_margin and bool(batch["has_margin"].any()):
        margin = (batch["margin"] * batch["has_margin"]).to(chosen.device)
    loss = bradley_terry_loss(chosen, rejected, margin)
    if cfg.center_rewards_coefficient > 0:
        loss = loss + cfg.center_rewards_coefficient * reward_centering_penalty(chosen, rejected)
    metrics = {
        "accuracy": preference_accuracy(chosen, rejected),
        "margin": (chosen - rejected).mean().detach(),
        "rewards/chosen": chosen.mean().detach(),
        "rewards/rejected": rejected.mean().detach(),
    }
    return loss, metrics


class RewardTrainer:
    """Trains a scalar-head reward model: `RewardTrainer(RewardConfig(...)).train()`.

    The model starts from `cfg.model` (a causal LM whose vocabulary projection is replaced by
    a fresh scalar head, or a reward model folder to continue). The result in
    `output_dir/model` is what `--reward-model` takes in PPO and GRPO.
    """

    def __init__(
        self,
        config: RewardConfig,
        model: ScalarHeadModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.cfg = config
        if model is None:
            model, tokenizer = load_scalar_model(config.model, dtype=config.dtype, seed=config.seed)
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with the model")
        if config.use_lora:
            raise UserError("use_lora is not supported for reward models yet; train all weights")
        self.model, self.tokenizer = model, tokenizer

    def train(self) -> FitResult:
        cfg, tokenizer = self.cfg, self.tokenizer
        train_records, eval_records = load_train_eval(cfg, "preference")
        train_features = tokenize(train_records, tokenizer, cfg)
        eval_features = tokenize(eval_records, tokenizer, cfg)
        collator = PreferenceCollator(tokenizer.pad_token_id)
        train_collator = collator
        if cfg.frozen_layers:
            layers = self.model.config.num_hidden_layers
            if cfg.frozen_layers >= layers:
                raise UserError(
                    f"frozen_layers must be below the model's {layers} decoder layers, "
                    f"got {cfg.frozen_layers}"
                )
            backbone = self.model.backbone
            backbone.embed_tokens.requires_grad_(False)
            for layer in backbone.layers[: cfg.frozen_layers]:
                layer.requires_grad_(False)
            train_features, eval_features, states = trunk_features(
                self.model, train_features, eval_features, cfg.frozen_layers
            )
            train_collator = TrunkGroupCollator(states)
            collator = TrunkPairCollator(states)

        def save(model: ScalarHeadModel, directory: Path) -> None:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)

        engine = Engine(cfg, self.model, save_model=save, load_model=lambda m, d: m.load_weights(d))

        def loss_fn(model: ScalarHeadModel, batch: dict[str, Any]):
            return reward_batch_loss(model, batch, cfg)

        def eval_fn(model: ScalarHeadModel) -> dict[str, float]:
            def per_pair(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
                if "states" in batch:
                    scores = score_from_trunk(
                        model, batch["states"], batch["attention_mask"], cfg.frozen_layers
                    )
                    chosen, rejected = scores.chunk(2)
                else:
                    chosen, rejected = pair_scores(model, batch)
                return {
                    "accuracy": (chosen > rejected).float(),
                    "margin": chosen - rejected,
                    "loss": -F.logsigmoid(chosen - rejected),
                }

            return evaluate_in_batches(
                eval_features, collator, per_pair, batch_size=cfg.batch_size, device=engine.device
            )

        if eval_features and not cfg.resume:
            engine.evaluate(eval_fn, epoch=0.0)
        return engine.fit(
            train_features,
            train_collator,
            loss_fn,
            eval_fn if eval_features else None,
            progress_metric="accuracy",
        )
