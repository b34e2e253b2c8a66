"""Two answers per prompt from a policy, written to the store as items as they come.

The policy answers each pending prompt twice (``alignkit.rollout.sampling.sample`` with
two samples per prompt, the prompt prefilled once); a pair whose two answers are the same
text, or empty, teaches nothing and is drawn again, at most three times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignkit.rollout.sampling import SamplingConfig, sample
from alignkit.web.store import Store


@dataclass
class PairSampling:
    """How pairs are drawn (``annotate new`` / ``serve`` options)."""

    max_new_tokens: int = 128
    temperature: float = 0.9
    top_p: float = 1.0
    batch_size: int = 4  # prompts per sampling call
    seed: int = 0

    def config(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            do_sample=True,
        )


def sample_pending_batch(
    store: Store,
    policy,
    tokenizer,
    options: PairSampling,
    *,
    model_name: str | None = None,
    policy_version: int = 0,
    call: int = 0,
) -> int:
    """Sample one pair for each of the next ``options.batch_size`` pending prompts (of
    projects on ``model_name``, when given); returns how many prompts it worked on."""
    pending = [
        row
        for row in store.pending_prompts(limit=options.batch_size * 4)
        if model_name is None or row["model"] == model_name
    ][: options.batch_size]
    if not pending:
        return 0
    rollout = sample(
        policy,
        tokenizer,
        [row["prompt"] for row in pending],
        options.config(),
        num_samples=2,
        seed=options.seed + 7919 * call,  # a retry of a prompt draws new answers
    )
    for index, row in enumerate(pending):
        answer_a = rollout.texts[2 * index].strip()
        answer_b = rollout.texts[2 * index + 1].strip()
        if not answer_a or not answer_b or answer_a == answer_b:
            store.prompt_failed(row["id"])
            continue
        store.add_item(
            row["project_id"],
            row["prompt"],
            answer_a,
            answer_b,
            group=row["grp"],
            prompt_id=row["id"],
            policy_version=policy_version,
        )
    return len(pending)


def sample_all_pending(
    store: Store,
    policy,
    tokenizer,
    options: PairSampling,
    *,
    model_name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Sample until no prompt of ``model_name`` owes a pair; ``on_progress(sampled, pending)``
    after each batch."""
    call = 0
    while sample_pending_batch(store, policy, tokenizer, options, model_name=model_name, call=call):
        call += 1
        if on_progress is not None:
            progress = store.sampling_progress()
            on_progress(progress["sampled"], progress["pending"])
