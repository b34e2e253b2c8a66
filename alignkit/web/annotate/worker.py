"""The annotate area's background worker: sampling, scoring, learning, one thing at a time.

One thread, so the model work of ``alignkit serve`` never runs twice at once on a small
machine, and the request handlers never wait on a model. Each turn does the first job
there is:

1. sample pairs for prompts that still owe them (a new project, or online mode asking
   for pairs from the updated policy);
2. score items the reward model has not seen (active learning);
3. with online DPO on, once ``every`` new consensus pairs are in: DPO steps on the
   policy, then ask for one new pair for each of those prompts, from the updated policy.

``status`` is what the page shows (state, sampled / pending, policy version, how many
consensus pairs until the next update). An error in a job is logged and shown there, and
the worker keeps serving the rest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.web.annotate.online import OnlineDPOLearner, OnlineDPOSettings, new_consensus_pairs
from alignkit.web.annotate.sampling import PairSampling, sample_pending_batch
from alignkit.web.store import Store

log = logging.getLogger("alignkit.web.annotate")


@dataclass
class WorkerSettings:
    """What the worker may do (from ``alignkit serve``'s options)."""

    model: str | None = None  # the policy that samples (default: each project's own)
    reward_model: str | None = None
    online_dpo: OnlineDPOSettings | None = None
    sampling: PairSampling = field(default_factory=PairSampling)
    runs_dir: Path = Path("runs")
    poll_s: float = 0.5


class AnnotateWorker:
    """Runs the jobs above in a daemon thread until ``stop``."""

    def __init__(self, store: Store, settings: WorkerSettings):
        self.store = store
        self.settings = settings
        self._policies: dict[str, tuple[Any, Any]] = {}
        self._scorer = None
        self._learner: OnlineDPOLearner | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="annotate-worker", daemon=True)
        self._calls = 0
        self.state = "idle"
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AnnotateWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        """A label arrived: look for work now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
                self.last_error = None if worked else self.last_error
            except Exception as error:  # a job's bug must not end the worker: log it, show it
                log.exception("annotate worker job failed")
                self.last_error = f"{type(error).__name__}: {error}"
                worked = False
            self.state = "idle"
            if not worked:
                self._wake.wait(self.settings.poll_s * (20 if self.last_error else 1))
                self._wake.clear()

    # ------------------------------------------------------------------ jobs

    def run_once(self) -> bool:
        """Do the first job there is; False when there was none."""
        return self._sample() or self._score() or self._learn()

    def _policy_name(self) -> str | None:
        if self.settings.model:
            return self.settings.model
        pending = self.store.pending_prompts(limit=1)
        return pending[0]["model"] if pending else None

    def policy(self, name: str):
        """(model, tokenizer) for ``name``, loaded once; LoRA-wrapped in online mode."""
        if name not in self._policies:
            from alignkit.models import apply_lora, load_causal_lm

            model, tokenizer = load_causal_lm(name)
            online = self.settings.online_dpo
            if online is not None:
                model = apply_lora(model, r=online.lora_r, alpha=2 * online.lora_r)
            self._policies[name] = (model, tokenizer)
        return self._policies[name]

    def _sample(self) -> bool:
        name = self._policy_name()
        if name is None:
            return False
        self.state = "sampling"
        model, tokenizer = self.policy(name)
        worked = sample_pending_batch(
            self.store,
            model,
            tokenizer,
            self.settings.sampling,
            model_name=None if self.settings.model else name,
            policy_version=self.store.policy_version(),
            call=self._calls,
        )
        self._calls += 1
        return worked > 0

    def _score(self) -> bool:
        if not self.settings.reward_model or not self.store.items(unscored_only=True):
            return False
        self.state = "scoring"
        if self._scorer is None:
            from alignkit.web.annotate.active import load_reward_scorer

            self._scorer = load_reward_scorer(self.settings.reward_model)
        from alignkit.web.annotate.active import score_unscored_items

        return score_unscored_items(self.store, self._scorer) > 0

    def _overlaps(self) -> dict[int, int]:
        return {project["id"]: project["overlap"] for project in self.store.projects()}

    def pairs_until_update(self) -> int | None:
        online = self.settings.online_dpo
        if online is None:
            return None
        return max(online.every - len(new_consensus_pairs(self.store, self._overlaps())), 0)

    def _learn(self) -> bool:
        online = self.settings.online_dpo
        if online is None:
            return False
        pairs = new_consensus_pairs(self.store, self._overlaps())
        if len(pairs) < online.every:
            return False
        name = self.settings.model or self._online_model()
        if name is None:
            return False
        self.state = "training"
        model, tokenizer = self.policy(name)
        if self._learner is None:
            self._learner = OnlineDPOLearner(model, tokenizer, online)
        pairs = pairs[: online.every]
        result = self._learner.update(pairs)
        version = self.store.policy_version() + 1
        adapter_dir = self.settings.runs_dir / "annotate-online" / f"policy-v{version}"
        self._learner.save(adapter_dir)
        self.store.add_policy_update(
            pairs=len(pairs),
            steps=result["steps"],
            loss_before=result["loss_before"],
            loss_after=result["loss_after"],
            moves=result["moves"],
            adapter_dir=str(adapter_dir),
        )
        prompt_ids = [self.store.item(pair.item_id).prompt_id for pair in pairs]
        self.store.request_pairs([pid for pid in prompt_ids if pid is not None])
        return True

    def _online_model(self) -> str | None:
        models = [p["model"] for p in self.store.projects() if p["source"] == "prompts"]
        return models[-1] if models else None

    # ------------------------------------------------------------------ for the page

    def status(self) -> dict[str, Any]:
        progress = self.store.sampling_progress()
        return {
            "state": self.state,
            "sampled": progress["sampled"],
            "pending": progress["pending"],
            "active_learning": bool(self.settings.reward_model),
            "online_dpo": self.settings.online_dpo is not None,
            "policy_version": self.store.policy_version(),
            "pairs_until_update": self.pairs_until_update(),
            "error": self.last_error,
        }
