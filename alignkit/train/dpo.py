"""Direct preference optimisation: the policy learns from preference pairs, no reward model.

One concatenated forward pass scores chosen and rejected together (rows 0..B-1 and B..2B-1
of the batch). The reference log-probabilities are computed once for the whole dataset
before training (they never change), so the reference model is not even kept in memory
afterwards — unless `precompute_ref_logps` is off, in which case π_ref scores each batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignkit.data import PreferenceCollator
from alignkit.models.reference import ReferencePolicy
from alignkit.models.scoring import labelled_token_logprobs
from alignkit.ops.logprobs import sequence_logprobs
from alignkit.ops.losses import dpo_loss, simpo_loss
from alignkit.options import ConfigValueError, option
from alignkit.train.common import (
    evaluate_in_batches,
    export_merged_lora,
    load_train_eval,
    policy_and_tokenizer,
    save_policy_hook,
    tokenize,
)
from alignkit.train.engine import Engine, FitResult
from alignkit.train.train_config import TrainConfig

LossType = Literal["sigmoid", "ipo", "hinge", "robust", "simpo"]
# IPO and SimPO compare length-averaged log-probabilities (as their papers and TRL do).
_AVERAGED = {"ipo", "simpo"}


@dataclass
class DPOConfig(TrainConfig):
    """Options for `alignkit dpo`."""

    learning_rate: float = option(5e-6, "Peak learning rate.", gt=0)
    beta: float = option(0.1, "β: strength of the implicit KL constraint to the reference.", gt=0)
    loss_type: LossType = option(
        "sigmoid",
        "sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO, needs label_smoothing), simpo (no reference).",
    )
    label_smoothing: float = option(
        0.0,
        "Assumed fraction of flipped labels: conservative DPO (sigmoid) or robust DPO.",
        min=0,
        lt=0.5,
    )
    simpo_gamma_beta_ratio: float = option(
        0.5, "SimPO's target margin γ as a multiple of β.", min=0
    )
    precompute_ref_logps: bool = option(
        True, "Score the whole dataset under the reference once before training."
    )

    def validate(self) -> None:
        super().validate()
        if self.loss_type == "robust" and self.label_smoothing == 0:
            raise ConfigValueError("label_smoothing", "robust DPO needs a flip rate > 0")
        if self.loss_type in ("ipo", "hinge") and self.label_smoothing != 0:
            raise ConfigValueError(
                "label_smoothing", f"is not defined for loss_type {self.loss_type}"
            )


def pair_logps(
    model: nn.Module, batch: dict[str, Any], *, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of the chosen and rejected halves from ONE forward pass, each
    pair's prompt run through the network once where the model allows it."""
    token_logps, mask = labelled_token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    logps = sequence_logprobs(token_logps, mask, average=average)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


@torch.no_grad()
def precompute_reference_logps(
    reference: Callable[..., Any],
    features: Sequence[dict[str, Any]],
    collator: PreferenceCollator,
    *,
    batch_size: int,
    average: bool,
    device: torch.device,
    desc: str = "reference log-probs",
) -> None:
    """Add `ref_chosen_logps` and `ref_rejected_logps` (floats) to each tokenized pair, in place."""
    for start in tqdm(range(0, len(features), batch_size), desc=desc, leave=False):
        chunk = features[start : start + batch_size]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(chunk).items()}
        chosen, rejected = pair_logps(reference, batch, average=average)
        for feature, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            feature["ref_chosen_logps"] = c
            feature["ref_rejected_logps"] = r


class ReferenceAwareCollator(PreferenceCollator):
    """PreferenceCollator that also stacks precomputed reference log-probs when present."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        if all("ref_chosen_logps" in f for f in features):
            batch["ref_chosen_logps"] = torch.tensor([f["ref_chosen_logps"] for f in features])
            batch["ref_rejected_logps"] = torch.tensor([f["ref_rejected_logps"] for f in features])
        return batch


def dpo_pair_terms(
    model: nn.Module,
    batch: dict[str, Any],
    cfg: DPOConfig,
    reference: ReferencePolicy | None = None,
) -> dict[str, torch.Tensor]:
    """Per pair [B]: the loss, the implicit rewards β·(log π − log π_ref), and log π."""
    average = cfg.loss_type in _AVERAGED
    chosen, rejected = pair_logps(model, batch, average=average)
    if cfg.loss_type == "simpo":
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen,
            rejected,
            beta=cfg.beta,
            gamma_beta_ratio=cfg.simpo_gamma_beta_ratio,
            label_smoothing=cfg.label_smoothing,
        )
    else:
        if "ref_chosen_logps" in batch:
            ref_chosen = batch["ref_chosen_logps"].to(chosen.device)
            ref_rejected = batch["ref_rejected_logps"].to(chosen.device)
        elif reference is not None:
            ref_chosen, ref_rejected = pair_logps(reference, batch, average=average)
        else:
            raise RuntimeError("DPO needs reference log-probs: precomputed or a reference model")
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
        )
    return {
        "loss": losses,
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "logps/chosen": chosen,
        "logps/rejected": rejected,
    }


def dpo_batch_loss(
    model: nn.Module,
    batch: dict[str, Any],
    cfg: DPOConfig,
    reference: ReferencePolicy | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO-family loss of one batch of pairs and TRL-named metrics."""
    terms = dpo_pair_terms(model, batch, cfg, reference)
    return terms["loss"].mean(), {name: v.mean().detach() for name, v in _metrics(terms).items()}


def _metrics(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    chosen, rejected = terms["rewards/chosen"], terms["rewards/rejected"]
    return {
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "logps/chosen": terms["logps/chosen"].detach(),
        "logps/rejected": terms["logps/rejected"].detach(),
    }


class DPOTrainer:
    """DPO and its variants on a causal LM: `DPOTrainer(DPOConfig(...)).train()`."""

    def __init__(
        self,
        config: DPOConfig,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.cfg = config
        self.model, self.tokenizer = policy_and_tokenizer(config, model, tokenizer)

    def train(self) -> FitResult:
        cfg, tokenizer = self.cfg, self.tokenizer
        train_records, eval_records = load_train_eval(cfg, "preference")
        train_features = tokenize(train_records, tokenizer, cfg)
        eval_features = tokenize(eval_records, tokenizer, cfg)
        collator = ReferenceAwareCollator(tokenizer.pad_token_id)
        engine = Engine(cfg, self.model, save_model=save_policy_hook(tokenizer))
        reference = None
        if cfg.loss_type != "simpo":
            reference = ReferencePolicy(engine.unwrapped_model)
            if cfg.precompute_ref_logps:
                precompute_reference_logps(
                    reference,
                    train_features + eval_features,
                    collator,
                    batch_size=cfg.batch_size,
                    average=cfg.loss_type in _AVERAGED,
                    device=engine.device,
                )
                reference = None  # every batch now carries its reference log-probs

        def loss_fn(model: nn.Module, batch: dict[str, Any]):
            return dpo_batch_loss(model, batch, cfg, reference)

        def eval_fn(model: nn.Module) -> dict[str, float]:
            def per_pair(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
                terms = dpo_pair_terms(model, batch, cfg, reference)
                return _metrics(terms) | {"loss": terms["loss"]}

            return evaluate_in_batches(
                eval_features, collator, per_pair, batch_size=cfg.batch_size, device=engine.device
            )

        if eval_features and not cfg.resume:
            engine.evaluate(eval_fn, epoch=0.0)  # the starting point, logged at step 0
        result = engine.fit(
            train_features,
            collator,
            loss_fn,
            eval_fn if eval_features else None,
            progress_metric="rewards/accuracies",
        )
        if cfg.use_lora and engine.is_main and result.model_dir is not None:
            export_merged_lora(engine.unwrapped_model, tokenizer, result.model_dir)
        return result
