"""What the online trainers (PPO, GRPO) share: the loop around the algorithm.

Each iteration takes a batch of prompts, samples responses from the current policy, scores
them (reward model, Python functions, shaping terms), turns that into experience, and
hands it to the algorithm's `update`, which makes one or more optimizer steps through the
engine. Around that the loop keeps β (fixed or adaptive), asks the guard whether the run
is being gamed, rolls back to the last good checkpoint when it is, writes a few rollouts
token by token, and checkpoints everything a run needs to continue exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample, load_dataset_records, train_eval_split
from alignkit.data.tokenization import pad_sequences
from alignkit.errors import UserError
from alignkit.guard import build_guard, build_kl_controller
from alignkit.models.reference import ReferencePolicy
from alignkit.models.scoring import IGNORE_INDEX, labelled_token_logprobs_and_entropy
from alignkit.ops.kl_estimators import kl_estimate
from alignkit.options import ConfigValueError, option
from alignkit.rewards import build_reward, build_reward_normalizer, repeated_ngram_fraction
from alignkit.rewards.base import RewardOutput
from alignkit.rollout.sampling import Rollout, SamplingConfig, sample
from alignkit.train.common import dataset_path, policy_and_tokenizer
from alignkit.train.engine import Engine, mean_dicts
from alignkit.train.optim import build_optimizer
from alignkit.train.train_config import TrainConfig

ROLLOUTS_FILE = "rollouts.jsonl"


@dataclass
class OnlineConfig(TrainConfig):
    """Options shared by `alignkit ppo` and `alignkit grpo`."""

    dataset: str | None = option(
        None, "Prompts: a prompt-only file (or any file with a `prompt` column), or `demo`."
    )
    max_steps: int | None = option(
        None,
        "Rollout iterations (each: sample, score, update); none = num_epochs over the prompts.",
        min=1,
    )
    batch_size: int = option(8, "Prompts per rollout iteration (per process).", min=1)
    gradient_accumulation_steps: int = option(1, "Minibatches per optimizer step.", min=1)
    learning_rate: float = option(1e-6, "Peak learning rate.", gt=0)
    warmup_ratio: float = option(0.0, "Warm-up as a fraction of all optimizer steps.", min=0, max=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = option(
        "constant", "Learning-rate schedule after warm-up."
    )
    save_every: int = option(10, "Checkpoint every N iterations (0 = only at the end).", min=0)
    keep_last_checkpoints: int = option(
        3, "Checkpoints kept on disk (rollback needs a good one).", min=1
    )
    log_every: int = option(1, "Write metrics every N iterations.", min=1)
    eval_every: int = option(
        0, "Answer the held-out prompts greedily every N iterations (0 = only at the end).", min=0
    )

    # rewards
    reward_model: str | None = option(None, "A reward model folder written by `alignkit rm`.")
    reward: dict[str, Any] = option(
        {}, "Reward section: reward_functions, shaping, ensemble, demo_judge, normalize (see docs)."
    )
    gold_reward: dict[str, Any] = option(
        {}, "A held-out reward logged as gold/score (not optimised), e.g. {demo_judge: true}."
    )
    missing_eos_penalty: float | None = option(
        None, "Subtract this from the score of a response that never ended (no EOS)."
    )

    # KL to the reference
    kl_coef: float = option(0.05, "β: weight of the KL penalty to the reference.", min=0)
    kl_target: float | None = option(
        None, "Adaptive β (Ziegler et al. 2019) toward this KL per sequence; none = fixed β.", gt=0
    )
    kl_horizon: int = option(10000, "Horizon of the adaptive KL controller.", min=1)
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "Per-token KL estimator.")

    # sampling
    max_new_tokens: int = option(48, "Longest response sampled.", min=1)
    min_new_tokens: int = option(
        0, "Shortest response sampled: EOS is held back until then (0 = off).", min=0
    )
    temperature: float = option(1.0, "Sampling temperature.", gt=0)
    top_p: float = option(1.0, "Nucleus sampling.", gt=0, max=1)
    top_k: int = option(0, "Top-k sampling (0 = off).", min=0)
    stop_strings: list[str] = option([], "Extra strings that end a response.")

    # the guard
    guard: dict[str, Any] = option(
        {}, "Guard section: policy (warn|stop|rollback), detectors, rollback factors (see docs)."
    )

    # inspection
    rollouts_every: int = option(10, "Write rollouts.jsonl every N iterations (0 = never).", min=0)
    rollouts_per_log: int = option(4, "Rollouts written each time.", min=1)

    def validate(self) -> None:
        super().validate()
        if not (self.reward_model or self.reward):
            raise ConfigValueError(
                "reward_model",
                "an online run needs a reward: --reward-model PATH or a reward section",
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigValueError(
                "min_new_tokens", f"must not exceed max_new_tokens ({self.max_new_tokens})"
            )

    def reward_section(self) -> dict[str, Any]:
        section = dict(self.reward)
        if self.reward_model:
            section.setdefault("reward_model", self.reward_model)
        return section


# ----------------------------------------------------------------------------- experience


@dataclass
class Sequences:
    """Prompts + sampled responses, right-padded, with labels on the response tokens only."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 on prompt and padding
    response_lengths: torch.Tensor  # [B], tokens including EOS
    ended: torch.Tensor  # [B] bool, the response ended with EOS or a stop string

    def to(self, device: torch.device) -> Sequences:
        return Sequences(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)),
                         self.response_lengths, self.ended)  # fmt: skip

    def select(self, index: torch.Tensor) -> Sequences:
        return Sequences(*(t[index] for t in (self.input_ids, self.attention_mask, self.labels)),
                         self.response_lengths[index], self.ended[index])  # fmt: skip


def assemble(rollout: Rollout, pad_token_id: int, eos_token_id: int) -> Sequences:
    """Re-pack left-padded prompts and their responses into right-padded sequences, so
    positions count from 0 in every row exactly as at generation time."""
    rows, labels, lengths, ended = [], [], [], []
    for i in range(rollout.prompt_ids.shape[0]):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        n = int(rollout.response_mask[i].sum())
        response = rollout.response_ids[i, :n].tolist()
        rows.append(prompt + response)
        labels.append([IGNORE_INDEX] * len(prompt) + response)
        lengths.append(n)
        ended.append(n < rollout.response_ids.shape[1] or (n > 0 and response[-1] == eos_token_id))
    width = max(len(r) for r in rows)
    input_ids = pad_sequences(rows, pad_token_id, width)
    label_ids = pad_sequences(labels, IGNORE_INDEX, width)
    mask = pad_sequences([[1] * len(r) for r in rows], 0, width)
    return Sequences(
        input_ids, mask, label_ids, torch.tensor(lengths), torch.tensor(ended, dtype=torch.bool)
    )


class PromptStream:
    """Deterministic prompt batches: a seeded permutation per epoch, sharded over processes."""

    def __init__(self, prompts: Sequence[PromptExample], batch_size: int, seed: int,
                 num_processes: int = 1, rank: int = 0):  # fmt: skip
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.rank = rank
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = len(self.prompts) // self.global_batch
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{len(self.prompts)} prompts are fewer than one rollout batch of "
                f"{batch_size} x {num_processes} process(es); lower --batch-size or add prompts"
            )

    def batch(self, iteration: int) -> list[PromptExample]:
        epoch, k = divmod(iteration, self.batches_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.prompts), generator=generator).tolist()
        start = k * self.global_batch + self.rank * self.batch_size
        return [self.prompts[i] for i in order[start : start + self.batch_size]]


# ----------------------------------------------------------------------------- the loop


@dataclass
class OnlineResult:
    """What an online trainer returns."""

    steps: int  # rollout iterations done
    optimizer_steps: int
    train_metrics: dict[str, Any]  # the last logged record
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    model_dir: Path | None = None
    nonfinite_skips: int = 0
    stopped_by_guard: str | None = None
    rollbacks: int = 0


class OnlineTrainer:
    """The shared loop; PPO and GRPO implement `trainable_module`, `updates_per_iteration`,
    `make_experience` and `update`."""

    command = "online"
    samples_per_prompt = 1

    def __init__(
        self,
        config: OnlineConfig,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.cfg = config
        self.policy, tokenizer = policy_and_tokenizer(config, model, tokenizer)
        self.tokenizer = tokenizer
        self.reward_fn = build_reward(config.reward_section(), tokenizer=tokenizer)
        self.gold_fn = (
            build_reward(config.gold_reward, tokenizer=tokenizer) if config.gold_reward else None
        )
        self.normalizer = build_reward_normalizer(config.reward)
        self.kl_controller = build_kl_controller(
            {"beta": config.kl_coef, "target": config.kl_target, "horizon": config.kl_horizon}
        )
        self.guard = build_guard(config.guard)
        self.sampling = SamplingConfig(
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            do_sample=True,
            stop_strings=tuple(config.stop_strings),
        )

    # --- to implement ---------------------------------------------------------------

    def trainable_module(self) -> nn.Module:
        raise NotImplementedError

    def updates_per_iteration(self) -> int:
        raise NotImplementedError

    def make_experience(
        self, prompts: list[PromptExample], iteration: int
    ) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    def update(self, experience: Any, iteration: int) -> list[dict[str, float]]:
        raise NotImplementedError

    def learning_rates(self, module: nn.Module) -> dict[nn.Module, float]:
        """Submodules of the trained module with a peak learning rate of their own."""
        return {}

    def save_hooks(self) -> dict[str, Any]:
        return {}

    # --- shared pieces --------------------------------------------------------------

    def sample(self, prompts: list[PromptExample], iteration: int) -> tuple[Rollout, Sequences]:
        engine = self.engine
        rollout = sample(
            self.policy_module(),
            self.tokenizer,
            [p.prompt for p in prompts],
            self.sampling,
            num_samples=self.samples_per_prompt,
            seed=self.cfg.seed * 7919 + iteration * 104_729 + engine.accelerator.process_index,
            max_prompt_length=self.cfg.max_prompt_length,
        )
        sequences = assemble(rollout, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        return rollout, sequences.to(engine.device)

    def score(
        self, prompts: list[PromptExample], texts: list[str], sequences: Sequences
    ) -> tuple[RewardOutput, torch.Tensor, dict[str, float]]:
        """Raw reward output, the scores to optimise (penalised, normalised), and metrics."""
        expanded = [p.prompt for p in prompts for _ in range(self.samples_per_prompt)]
        output = self.reward_fn(expanded, texts)
        scores = output.scores.clone()
        if self.cfg.missing_eos_penalty is not None:
            scores = scores - self.cfg.missing_eos_penalty * (~sequences.ended).float()
        metrics = {"objective/scores": float(output.scores.mean())}
        for name, values in output.parts.items():
            metrics[f"rewards/{name}"] = float(values.mean())
        groups = [p.group for p in prompts for _ in range(self.samples_per_prompt)]
        metrics.update(
            group_figures(output.scores, groups, prefix="objective/scores", with_counts=True)
        )
        if self.gold_fn is not None:
            gold = self.gold_fn(expanded, texts).scores
            metrics["gold/score"] = float(gold.mean())
            metrics.update(group_figures(gold, groups, prefix="gold/score", with_counts=True))
        if self.normalizer is not None:
            scores = self.normalizer(scores, update=True)
        metrics["completions/mean_length"] = float(sequences.response_lengths.float().mean())
        metrics["completions/mean_words"] = sum(len(t.split()) for t in texts) / len(texts)
        metrics["completions/ended"] = float(sequences.ended.float().mean())
        metrics["completions/repetition_rate"] = sum(
            repeated_ngram_fraction(t) for t in texts
        ) / len(texts)
        return output, scores.to(self.engine.device), metrics

    @torch.no_grad()
    def reference_logps(self, sequences: Sequences) -> torch.Tensor:
        logps, _, _ = labelled_token_logprobs_and_entropy(
            self.reference, sequences.input_ids, sequences.attention_mask, sequences.labels,
            temperature=self.cfg.temperature,
        )  # fmt: skip
        return logps

    def kl_terms(
        self, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-token KL estimate, 0 outside the response."""
        return kl_estimate(logps, ref_logps, self.cfg.kl_estimator) * mask

    def write_rollouts(self, records: list[dict[str, Any]]) -> None:
        if not self.engine.is_main or not records:
            return
        with open(Path(self.cfg.output_dir) / ROLLOUTS_FILE, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    # --- the loop -------------------------------------------------------------------

    def iterations(self, stream: PromptStream) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return self.cfg.num_epochs * stream.batches_per_epoch

    def load_prompts(self) -> tuple[list[PromptExample], list[PromptExample]]:
        """Training prompts, and held-out ones (`eval_dataset`, or an `eval_fraction` split)."""
        cfg = self.cfg
        prompts = load_dataset_records(dataset_path(cfg.dataset, "prompt"), "prompt")
        if cfg.eval_dataset:
            return prompts, load_dataset_records(dataset_path(cfg.eval_dataset, "prompt"), "prompt")
        return train_eval_split(prompts, cfg.eval_fraction, seed=cfg.seed)

    @torch.no_grad()
    def evaluate(self, prompts: list[PromptExample]) -> dict[str, Any]:
        """Greedy answers to the held-out prompts, scored by the reward (and the gold reward):
        `eval_objective/scores`, `eval_gold/score`, per user group and their gap."""
        texts, groups = [], []
        greedy = dataclasses.replace(self.sampling, do_sample=False)
        for start in range(0, len(prompts), self.cfg.batch_size):
            chunk = prompts[start : start + self.cfg.batch_size]
            rollout = sample(
                self.policy_module(), self.tokenizer, [p.prompt for p in chunk], greedy,
                max_prompt_length=self.cfg.max_prompt_length,
            )  # fmt: skip
            texts += rollout.texts
            groups += [p.group for p in chunk]
        questions = [p.prompt for p in prompts]
        scores = self.reward_fn(questions, texts).scores
        metrics = {"eval_objective/scores": float(scores.mean())}
        metrics.update(group_figures(scores, groups, prefix="eval_objective/scores"))
        if self.gold_fn is not None:
            gold = self.gold_fn(questions, texts).scores
            metrics["eval_gold/score"] = float(gold.mean())
            metrics.update(group_figures(gold, groups, prefix="eval_gold/score"))
        metrics["eval_completions/mean_words"] = sum(len(t.split()) for t in texts) / len(texts)
        return self.engine.log(metrics, reduce=False)

    def train(self) -> OnlineResult:
        cfg = self.cfg
        module = self.trainable_module()
        optimizer = build_optimizer(module, cfg, module_lrs=self.learning_rates(module))
        self.engine = engine = Engine(cfg, module, optimizer=optimizer, **self.save_hooks())
        self.reference = ReferencePolicy(self.policy_module())
        train_prompts, eval_prompts = self.load_prompts()
        stream = PromptStream(
            train_prompts, cfg.batch_size, cfg.seed,
            engine.accelerator.num_processes, engine.accelerator.process_index,
        )  # fmt: skip
        eval_metrics: dict[str, Any] = {}
        iterations = self.iterations(stream)
        engine.set_total_steps(iterations * self.updates_per_iteration())
        engine.register_state("kl_controller", self.kl_controller)
        engine.register_state("guard", self.guard)
        if self.normalizer is not None:
            engine.register_state("reward_normalizer", self.normalizer)
        if cfg.resume:
            engine.resume()
        iteration = int(engine.state.extra.get("iteration", 0))
        last_record: dict[str, Any] = {}
        stopped: str | None = None
        bar = tqdm(
            total=iterations, initial=iteration, disable=not engine.is_main, desc=self.command
        )
        try:
            while iteration < iterations:
                prompts = stream.batch(iteration)
                experience, metrics = self.make_experience(prompts, iteration)
                step_metrics = self.update(experience, iteration)
                iteration += 1
                engine.state.extra["iteration"] = iteration
                metrics.update(mean_dicts(step_metrics))
                metrics["objective/beta"] = self.kl_controller.value
                metrics["iteration"] = iteration
                metrics = reduce_across_processes(engine, metrics)
                self.kl_controller.update(
                    metrics["objective/kl"], cfg.batch_size * self.samples_per_prompt
                )
                if iteration % cfg.log_every == 0 or iteration == iterations:
                    last_record = engine.log(metrics, reduce=False)
                bar.update(1)
                bar.set_postfix(
                    {
                        "score": f"{metrics['objective/scores']:.3f}",
                        "kl": f"{metrics['objective/kl']:.3f}",
                    },
                    refresh=False,
                )
                decision = self.guard.observe(engine.state.step, metrics)
                for event in decision.events:
                    engine.run.log_event(
                        "guard", engine.state.step, event.message,
                        detector=event.detector, severity=event.severity, values=event.values,
                    )  # fmt: skip
                if decision.action == "stop":
                    stopped = decision.reason
                    engine.run.log_event("stop", engine.state.step, decision.reason, reason="guard")
                    break
                if decision.action == "rollback":
                    iteration = self.rollback(decision)
                    bar.n = iteration
                    continue
                if eval_prompts and cfg.eval_every and iteration % cfg.eval_every == 0:
                    eval_metrics = self.evaluate(eval_prompts)
                if cfg.save_every and iteration % cfg.save_every == 0 and iteration < iterations:
                    self.guard.mark_good(engine.state.step)
                    engine.save_checkpoint()
        finally:
            bar.close()
        if eval_prompts and not (cfg.eval_every and iteration % cfg.eval_every == 0):
            eval_metrics = self.evaluate(eval_prompts)
        self.guard.mark_good(engine.state.step)
        checkpoint = engine.save_checkpoint()
        model_dir = engine.save_model(Path(cfg.output_dir) / "model")
        engine.run.log_event("finished", engine.state.step, f"{iteration} iterations")
        engine.close()
        return OnlineResult(
            steps=iteration,
            optimizer_steps=engine.state.step,
            train_metrics=last_record,
            eval_metrics=eval_metrics,
            checkpoint=checkpoint,
            model_dir=model_dir,
            nonfinite_skips=engine.state.nonfinite_total,
            stopped_by_guard=stopped,
            rollbacks=self.guard.rollbacks,
        )

    def policy_module(self) -> nn.Module:
        """The unwrapped policy (for sampling and as the reference's source)."""
        return self.engine.unwrapped_model

    def rollback(self, decision) -> int:
        """Restore the last good checkpoint, tighten β and lower the learning rate."""
        engine, cfg = self.engine, self.cfg
        path = Path(cfg.output_dir) / "checkpoints" / f"step-{decision.rollback_to}"
        if not path.is_dir():
            message = (
                f"guard asked for a rollback to step {decision.rollback_to}, but {path} is gone"
            )
            engine.run.log_event("stop", engine.state.step, message, reason="guard")
            raise UserError(message + "; raise --keep-last-checkpoints")
        guard_state = self.guard.state_dict()  # the guard's own memory survives the rewind
        beta = self.kl_controller.value
        from_step = engine.state.step
        engine.load_checkpoint(path)
        self.guard.load_state_dict(guard_state)
        self.kl_controller.value = max(self.kl_controller.value, beta) * decision.beta_factor
        lr = cfg.learning_rate * self.guard.lr_scale
        # The schedule's shape stays; each group's peak (its own for PPO's critic) drops.
        # LambdaLR: lr_t = base_lr · λ(t), and `initial_lr` is the group's configured peak.
        scheduler = engine.scheduler
        groups = engine.optimizer.param_groups
        scheduler.base_lrs = [g["initial_lr"] * self.guard.lr_scale for g in groups]
        for group, base, lr_lambda in zip(
            groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * lr_lambda(scheduler.last_epoch)
        engine.run.log_event(
            "rollback", from_step, decision.reason,
            to_step=decision.rollback_to, beta=self.kl_controller.value, learning_rate=lr,
        )  # fmt: skip
        return int(engine.state.extra.get("iteration", 0))


def minibatches(
    n: int, num_minibatches: int, passes: int, *, seed: int, iteration: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Row indices of each minibatch: `passes` shuffled passes over n rows, seeded per
    iteration so a resumed run draws the same minibatches."""
    size = n // num_minibatches
    generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    for _ in range(passes):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, size):
            yield order[start : start + size]


def reduce_across_processes(engine: Engine, metrics: dict[str, float]) -> dict[str, float]:
    """The iteration's metrics of every process combined (:func:`combine_process_metrics`),
    the same on every process."""
    if engine.accelerator.num_processes == 1:
        return combine_process_metrics([metrics])
    from accelerate.utils import gather_object

    return combine_process_metrics(gather_object([metrics]))


COUNT_SUFFIX = "#count"  # `<prefix>/<group>#count`: rows behind a per-group figure


def combine_process_metrics(per_process: Sequence[dict[str, float]]) -> dict[str, float]:
    """One set of metrics from each process's: a per-group figure that carries its row
    count (`<key>#count`, from ``group_figures(..., with_counts=True)``) is the
    count-weighted mean over processes, and `<prefix>/group_gap` is recomputed from the
    combined group means (a process may see one group only, or none); any other metric is
    the mean over the processes that have it. Counts are not returned."""
    keys = sorted(set().union(*per_process))
    combined: dict[str, float] = {}
    for key in keys:
        if key.endswith(COUNT_SUFFIX):
            continue
        having = [m for m in per_process if key in m]
        counts = [m.get(key + COUNT_SUFFIX) for m in having]
        if all(c is not None for c in counts) and sum(counts) > 0:
            combined[key] = sum(m[key] * c for m, c in zip(having, counts, strict=True)) / sum(
                counts
            )
        else:
            combined[key] = sum(m[key] for m in having) / len(having)
    groups_by_prefix: dict[str, list[float]] = {}
    for key in keys:
        if key.endswith(COUNT_SUFFIX):
            figure = key[: -len(COUNT_SUFFIX)]
            groups_by_prefix.setdefault(figure.rsplit("/", 1)[0], []).append(combined[figure])
    for prefix, values in groups_by_prefix.items():
        if len(values) > 1:
            combined[f"{prefix}/group_gap"] = max(values) - min(values)
    return combined


def group_figures(
    values: torch.Tensor,
    groups: Sequence[str | None],
    *,
    prefix: str,
    with_counts: bool = False,
) -> dict[str, float]:
    """Mean of `values` per user group, and the gap between the best and the worst group;
    with `with_counts`, also each group's row count (`<prefix>/<group>#count`) so that
    :func:`combine_process_metrics` can weight and re-take the gap across processes."""
    by_group: dict[str, list[float]] = {}
    for value, group in zip(values.tolist(), groups, strict=True):
        if group is not None:
            by_group.setdefault(group, []).append(value)
    figures = {f"{prefix}/{g}": sum(v) / len(v) for g, v in sorted(by_group.items())}
    if len(figures) > 1:
        figures[f"{prefix}/group_gap"] = max(figures.values()) - min(figures.values())
    if with_counts:
        figures.update({f"{prefix}/{g}{COUNT_SUFFIX}": float(len(v)) for g, v in by_group.items()})
    return figures
