"""The run around the iterations of an online trainer (PPO, GRPO).

A trainer builds its engine, then::

    loop = OnlineLoop(cfg, engine, policy, tokenizer, parts, ...)  # prompts, schedule, resume
    result = loop.run(trainer.iteration)

where `run` is::

    while loop.running():
        metrics = trainer.iteration(loop.prompts(), loop.iteration)
        loop.end_iteration(metrics)                    # β, log, guard, eval, checkpoint
    return loop.finish()                               # last eval, checkpoint, model/

`end_iteration` is the part every online iteration ends with: combine the metrics of all
processes, let β's controller see the KL, write the record, let the guard look at it (and
roll back or stop), answer the held-out prompts when due, checkpoint when due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignkit.data import PromptExample
from alignkit.errors import UserError
from alignkit.eval.held_out import score_greedy_answers
from alignkit.eval.segments import combine_process_metrics
from alignkit.guard import GuardDecision
from alignkit.rollout.sampling import Rollout
from alignkit.rollout.sequences import Sequences
from alignkit.train.common import export_merged_lora, load_train_eval
from alignkit.train.engine import Engine
from alignkit.train.online_config import OnlineConfig
from alignkit.train.online_steps import OnlineParts, sample_responses
from alignkit.train.sampler import PromptStream


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


def reduce_across_processes(engine: Engine, metrics: dict[str, float]) -> dict[str, float]:
    """The iteration's metrics of every process combined (:func:`combine_process_metrics`),
    the same on every process."""
    if engine.accelerator.num_processes == 1:
        return combine_process_metrics([metrics])
    from accelerate.utils import gather_object

    return combine_process_metrics(gather_object([metrics]))


class OnlineLoop:
    """Prompts, schedule, resume, and the bookkeeping that ends every iteration.

    Args:
        cfg: the trainer's config.
        engine: built by the trainer over what it trains (PPO: policy and critic).
        policy: the unwrapped policy, which samples and answers the held-out prompts.
        parts: the scorer, β's controller and the guard
            (:func:`~alignkit.train.online_steps.build_online_parts`).
        updates_per_iteration: optimizer updates one iteration makes (the schedule's length
            is this × the iterations).
        samples_per_prompt: responses sampled per prompt (G for GRPO).
    """

    def __init__(
        self,
        cfg: OnlineConfig,
        engine: Engine,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        parts: OnlineParts,
        updates_per_iteration: int,
        *,
        samples_per_prompt: int = 1,
        command: str = "online",
    ):
        self.cfg, self.engine, self.policy, self.tokenizer = cfg, engine, policy, tokenizer
        self.scorer, self.kl_controller, self.guard = parts.scorer, parts.kl_controller, parts.guard
        self.samples_per_prompt = samples_per_prompt
        self.samples_per_iteration = cfg.batch_size * samples_per_prompt
        train_prompts, self.eval_prompts = load_train_eval(cfg, "prompt")
        accelerator = engine.accelerator
        self.stream = PromptStream(
            train_prompts,
            cfg.batch_size,
            cfg.seed,
            accelerator.num_processes,
            accelerator.process_index,
        )
        self.total_iterations = cfg.max_steps or cfg.num_epochs * self.stream.batches_per_epoch
        engine.set_total_steps(self.total_iterations * updates_per_iteration)
        engine.register_state("kl_controller", self.kl_controller)
        engine.register_state("guard", self.guard)
        if self.scorer.normalizer is not None:
            engine.register_state("reward_normalizer", self.scorer.normalizer)
        if cfg.resume:
            engine.resume()
        self.total_iterations = engine.start_time_budget(
            self.total_iterations,
            unit="iterations",
            updates_per_unit=updates_per_iteration,
            eval_every=cfg.eval_every if self.eval_prompts else 0,
            save_every=cfg.save_every,
            cap=cfg.max_steps,
        )
        self.iteration = int(engine.state.extra.get("iteration", 0))
        self.last_record: dict[str, Any] = {}
        self.eval_metrics: dict[str, Any] = {}
        self.stopped: str | None = None
        self.bar = tqdm(
            total=self.total_iterations,
            initial=self.iteration,
            disable=not engine.is_main,
            desc=command,
        )

    def run(
        self, iteration: Callable[[list[PromptExample], int], dict[str, float]]
    ) -> OnlineResult:
        """Every iteration until the last, or until the guard stops the run: the trainer's
        `iteration(prompts, k)` (sample, score, update; returns its metrics), then
        :meth:`end_iteration`. Then :meth:`finish`."""
        try:
            with self.engine.interruptible():  # Ctrl-C: a checkpoint between iterations
                while self.running():
                    self.end_iteration(iteration(self.prompts(), self.iteration))
                    if self.running():
                        self.engine.stop_if_interrupted()
        finally:
            self.bar.close()
        return self.finish()

    def running(self) -> bool:
        return self.stopped is None and self.iteration < self.total_iterations

    def prompts(self) -> list[PromptExample]:
        """This iteration's prompts (this process's share)."""
        return self.stream.batch(self.iteration)

    def sample(self, prompts: list[PromptExample]) -> tuple[Rollout, Sequences]:
        """`samples_per_prompt` responses to each prompt from the current policy, seeded by
        the iteration and the process (a resumed run samples the same responses), and the
        same rows right-padded for scoring, on the training device."""
        rank = self.engine.accelerator.process_index
        return sample_responses(
            self.policy,
            self.tokenizer,
            prompts,
            self.cfg,
            samples_per_prompt=self.samples_per_prompt,
            seed=self.cfg.seed * 7919 + self.iteration * 104_729 + rank,
            device=self.engine.device,
        )

    def due(self, every: int) -> bool:
        """Whether the iteration just finished is one of every `every` (0 = never)."""
        return every > 0 and self.iteration % every == 0

    def end_iteration(self, metrics: dict[str, float]) -> None:
        """β, log, guard, held-out evaluation and checkpoint after one iteration's update."""
        cfg, engine = self.cfg, self.engine
        self.iteration += 1
        engine.state.extra["iteration"] = self.iteration
        self.total_iterations = engine.after_budgeted_unit(self.iteration, self.total_iterations)
        self.bar.total = self.total_iterations
        # β as this iteration used it; the controller then moves it for the next one
        metrics = metrics | {
            "objective/beta": self.kl_controller.value,
            "iteration": self.iteration,
        }
        metrics = reduce_across_processes(engine, metrics)
        self.kl_controller.update(metrics["objective/kl"], self.samples_per_iteration)
        if self.due(cfg.log_every) or self.iteration == self.total_iterations:
            self.last_record = engine.log(metrics, reduce=False)
        self.bar.update(1)
        self.bar.set_postfix(
            {"score": f"{metrics['objective/scores']:.3f}", "kl": f"{metrics['objective/kl']:.3f}"},
            refresh=False,
        )

        decision = self.guard.observe(engine.state.step, metrics)
        for event in decision.events:
            engine.run.log_event(
                "guard",
                engine.state.step,
                event.message,
                detector=event.detector,
                severity=event.severity,
                values=event.values,
            )
        if decision.action == "stop":
            self.stopped = decision.reason
            engine.run.log_event("stop", engine.state.step, decision.reason, reason="guard")
            return
        if decision.action == "rollback":
            self.rollback(decision)
            return

        if self.eval_prompts and self.due(cfg.eval_every):
            self.evaluate()
        if self.due(cfg.save_every) and self.iteration < self.total_iterations:
            self.guard.mark_good(engine.state.step)
            engine.save_checkpoint()

    def evaluate(self) -> None:
        """Answer the held-out prompts greedily and log their scores."""
        cfg = self.cfg
        with self.engine.timed("eval"):
            metrics = score_greedy_answers(
                self.policy,
                self.tokenizer,
                self.eval_prompts,
                cfg.sampling_config(),
                self.scorer.reward_fn,
                self.scorer.gold_fn,
                batch_size=cfg.batch_size,
                max_prompt_length=cfg.max_prompt_length,
            )
        self.eval_metrics = self.engine.log(metrics, reduce=False)

    def rollback(self, decision: GuardDecision) -> None:
        """Restore the last good checkpoint and continue from it with a tighter leash: β
        and the learning rate as the decision says (see the guard's contract)."""
        engine = self.engine
        path = Path(self.cfg.output_dir) / "checkpoints" / f"step-{decision.rollback_to}"
        if not path.is_dir():
            message = (
                f"guard asked for a rollback to step {decision.rollback_to}, but {path} is gone"
            )
            engine.run.log_event("stop", engine.state.step, message, reason="guard")
            raise UserError(message + "; raise --keep-last-checkpoints")
        guard_state = self.guard.state_dict()  # the guard's own memory survives the rewind
        budgeted = engine.state.extra.get("time_budget")  # and so does a budgeted length
        beta_before, from_step = self.kl_controller.value, engine.state.step
        engine.load_checkpoint(path)
        self.guard.load_state_dict(guard_state)
        if budgeted is not None:
            engine.state.extra["time_budget"] = budgeted
        self.kl_controller.value = decision.beta_after_rollback(
            beta_before, self.kl_controller.value
        )
        engine.scale_peak_learning_rates(decision.lr_scale)
        engine.run.log_event(
            "rollback",
            from_step,
            decision.reason,
            to_step=decision.rollback_to,
            beta=self.kl_controller.value,
            learning_rate=self.cfg.learning_rate * decision.lr_scale,
        )
        self.iteration = int(engine.state.extra.get("iteration", 0))
        self.bar.n = self.iteration

    def finish(self) -> OnlineResult:
        """The last evaluation (unless the last iteration had one), the final checkpoint
        and `model/`."""
        cfg, engine = self.cfg, self.engine
        if self.eval_prompts and not self.due(cfg.eval_every):
            self.evaluate()
        self.guard.mark_good(engine.state.step)
        checkpoint = engine.save_checkpoint()
        model_dir = engine.save_model(Path(cfg.output_dir) / "model")
        if cfg.use_lora and engine.is_main:  # model/ loads by name, like SFT's and DPO's
            export_merged_lora(self.policy, self.tokenizer, model_dir)
        engine.run.log_event("finished", engine.state.step, f"{self.iteration} iterations")
        engine.close()
        return OnlineResult(
            steps=self.iteration,
            optimizer_steps=engine.state.step,
            train_metrics=self.last_record,
            eval_metrics=self.eval_metrics,
            checkpoint=checkpoint,
            model_dir=model_dir,
            nonfinite_skips=engine.state.nonfinite_total,
            stopped_by_guard=self.stopped,
            rollbacks=self.guard.rollbacks,
        )
