"""The playground's real-model mode: a language model answers a prompt twice, a person
picks the better answer, and one DPO step on that pair moves a LoRA adapter.

Everything is the library's: sampling is `alignkit.rollout.sampling.sample`, the pair is
tokenized by `alignkit.data.tokenization.tokenize_preference` and scored in one forward pass
by `alignkit.train.dpo.pair_logps`, the reference is the same network with its adapter off
(`alignkit.models.reference.ReferencePolicy`), and the loss is `alignkit.ops.losses.dpo_loss`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from alignkit.data.records import PreferenceExample
from alignkit.data.tokenization import PreferenceCollator, tokenize_preference
from alignkit.models.loading import load_causal_lm
from alignkit.models.reference import ReferencePolicy, apply_lora
from alignkit.ops.losses import dpo_loss
from alignkit.rollout.decoding import SamplingConfig
from alignkit.rollout.sampling import sample
from alignkit.train.dpo import pair_logps

MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 48


@dataclass
class RealModelSettings:
    """The real-model mode's fixed knobs (β and the learning rate come with each step)."""

    model: str
    lora_r: int = 8
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 1.0
    seed: int = 0


class RealModelSession:
    """One policy (a base model with a LoRA adapter) shared by the page's requests.

    The model is loaded at the first request, not at server start. A lock serialises the
    requests: sampling and a training step must not interleave on the same weights."""

    def __init__(self, settings: RealModelSettings):
        self.settings = settings
        self.lock = threading.Lock()
        self.policy = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.reference: ReferencePolicy | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.learning_rate: float | None = None
        self.steps = 0
        self.samples_drawn = 0

    def _ensure_loaded(self) -> None:
        if self.policy is not None:
            return
        model, tokenizer = load_causal_lm(self.settings.model, seed=self.settings.seed)
        self.policy = apply_lora(model, r=self.settings.lora_r, alpha=2 * self.settings.lora_r)
        self.tokenizer = tokenizer
        self.reference = ReferencePolicy(self.policy)

    def status(self) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "loaded": self.policy is not None,
            "steps": self.steps,
        }

    def sample_pair(self, prompt: str) -> dict[str, Any]:
        """Two samples for ``prompt`` from the current policy, with their log-probs."""
        with self.lock:
            self._ensure_loaded()
            started = time.perf_counter()
            rollout = sample(
                self.policy,
                self.tokenizer,
                [prompt],
                SamplingConfig(
                    max_new_tokens=self.settings.max_new_tokens,
                    temperature=self.settings.temperature,
                ),
                num_samples=2,
                seed=self.settings.seed * 7919 + self.samples_drawn,
            )
            self.samples_drawn += 1
            answers = [text.strip() for text in rollout.texts]
            return {"answers": answers, "seconds": round(time.perf_counter() - started, 2)}

    def _batch(self, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
        feature = tokenize_preference(PreferenceExample(prompt, chosen, rejected), self.tokenizer)
        batch = PreferenceCollator(self.tokenizer.pad_token_id)([feature])
        device = next(self.policy.parameters()).device
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        if self.optimizer is None or self.learning_rate != learning_rate:
            trainable = [p for p in self.policy.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam(trainable, lr=learning_rate)
            self.learning_rate = learning_rate
        return self.optimizer

    def prefer(
        self, prompt: str, chosen: str, rejected: str, *, beta: float, learning_rate: float
    ) -> dict[str, Any]:
        """One DPO step on (prompt, chosen ≻ rejected): log π before and after, and the loss.

        L = −log σ(β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]),
        one Adam step on the adapter's weights."""
        with self.lock:
            self._ensure_loaded()
            started = time.perf_counter()
            batch = self._batch(prompt, chosen, rejected)
            ref_chosen, ref_rejected = pair_logps(self.reference, batch)
            self.policy.train()
            policy_chosen, policy_rejected = pair_logps(self.policy, batch)
            losses, chosen_reward, rejected_reward = dpo_loss(
                policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta
            )
            optimizer = self._optimizer(learning_rate)
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
            self.policy.eval()
            with torch.no_grad():
                after_chosen, after_rejected = pair_logps(self.policy, batch)
            self.steps += 1
            return {
                "before": {
                    "chosen": float(policy_chosen.detach()),
                    "rejected": float(policy_rejected.detach()),
                },
                "after": {"chosen": float(after_chosen), "rejected": float(after_rejected)},
                "reference": {"chosen": float(ref_chosen), "rejected": float(ref_rejected)},
                "loss": float(losses.detach().mean()),
                "implicit_rewards": {
                    "chosen": float(chosen_reward),
                    "rejected": float(rejected_reward),
                },
                "steps": self.steps,
                "seconds": round(time.perf_counter() - started, 2),
            }
