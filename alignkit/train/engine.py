"""The training engine: Accelerate + AdamW + schedule + accumulation + checkpoints + run folder.

Offline trainers (SFT, reward model, DPO) build an :class:`Engine` and call :meth:`Engine.fit`::

    engine = Engine(cfg, model)                       # seeds, prepares model + AdamW, run folder
    result = engine.fit(train_ds, collate_fn, loss_fn, eval_fn, progress_metric="accuracy")

where ``loss_fn(model, batch) -> (loss, {"name": float, ...})`` is called once per micro-batch
(``batch`` already on the device) and ``eval_fn(model) -> {"name": float}`` is called on every
process with the unwrapped model in eval mode under ``torch.no_grad()``.

Online trainers (PPO, GRPO) drive their own loop with the same pieces (their
:class:`~alignkit.train.online_loop.OnlineLoop` does the parts around the update)::

    engine = Engine(cfg, policy_and_critic)
    engine.set_total_steps(n_updates)                 # scheduler over optimizer updates
    engine.register_state("kl_controller", kl_ctl)    # anything with state_dict/load_state_dict
    if cfg.resume:
        engine.resume()                               # restores weights, optimizer, RNG, extras
    it = engine.state.extra.get("iteration", 0)       # JSON-able counters of your own
    while it < n_iterations:
        experience = sample_and_score(engine.unwrapped_model)
        for rows in minibatch_indices(...):           # K epochs of minibatches
            with engine.accumulate():
                loss, metrics = ppo_loss(engine.model, experience, rows)
                engine.backward_and_step(loss, metrics)   # a window of
                                                          # gradient_accumulation_steps
        engine.state.extra["iteration"] = it = it + 1
        engine.log({"objective/scores": mean_score})  # reduced over processes, written
        if cfg.save_every and it % cfg.save_every == 0:
            engine.save_checkpoint()

Step counting: ``state.step`` counts completed accumulation windows, i.e. optimizer updates,
including ones skipped for a non-finite loss (their batches are consumed and the schedule
advances, so the learning rate is a function of ``state.step`` alone).

Non-finite losses: a NaN/Inf loss (or gradient norm) anywhere in a window, on any process,
skips that update (gradients zeroed), logs a ``nonfinite_skip`` event and counts it. More than
``cfg.max_consecutive_nonfinite`` skips in a row raise :class:`NonFiniteLossError`, a
:class:`~alignkit.errors.UserError` (the CLI prints it as one line); no checkpoint is written
for the failing steps, so the last good one stays the latest on disk.

Data parallel: under ``accelerate launch --num_processes N``, the model is wrapped (DDP) by
``accelerator.prepare``; the data is sharded by :class:`EpochBatchSampler` (not by
``accelerator.prepare(dataloader)``, so the data order and the resume position depend only on
the seed and the global batch, not on the process count); metrics are averaged over processes;
only the main process writes files. ``cfg.batch_size`` is per process.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from alignkit.errors import UserError
from alignkit.host_memory import keep_freed_host_memory
from alignkit.train.checkpoint import (
    CheckpointManager,
    default_load_model,
    default_save_model,
    load_torch,
    pause_for_fault_tests,
    rng_state,
    save_torch,
    set_rng_state,
    write_folder_atomically,
)
from alignkit.train.embedding_grads import (
    densify_sparse_grads,
    restore_dense_embedding_grads,
    use_sparse_embedding_grads,
)
from alignkit.train.optim import build_optimizer, build_scheduler
from alignkit.train.run_dir import RunDirectory, trainer_name, writing_to
from alignkit.train.sampler import EpochBatchSampler
from alignkit.train.time_budget import TimeBudget, parse_duration
from alignkit.train.train_config import TrainConfig

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]
EvalFn = Callable[[torch.nn.Module], "Mapping[str, Any]"]
ModelIO = Callable[[torch.nn.Module, Path], None]

STATE_FILE = "trainer_state.json"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


class NonFiniteLossError(UserError):
    """Too many consecutive non-finite losses: training stopped (the last good checkpoint stays)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at the end of an update, after writing ``checkpoint``."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainState:
    """Counters saved in every checkpoint (``trainer_state.json``)."""

    step: int = 0  # optimizer updates done (skipped non-finite ones included)
    epoch: int = 0  # current epoch of fit()'s data
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able values of the trainer's own


@dataclass
class StepResult:
    """What one :meth:`Engine.backward_and_step` call did."""

    stepped: bool  # this micro-batch closed an accumulation window (update done or skipped)
    skipped: bool = False  # the update was skipped: non-finite loss or gradient norm
    grad_norm: float | None = None  # total gradient norm before clipping (when stepped)
    metrics: dict[str, float] = field(default_factory=dict)  # this window's local means


@dataclass
class FitResult:
    """What :meth:`Engine.fit` returns."""

    steps: int  # optimizer updates done in total
    train_metrics: dict[str, Any]  # the last logged train record
    eval_metrics: dict[str, Any]  # the last evaluation record ({} without eval_fn)
    checkpoint: Path | None  # the final checkpoint folder
    model_dir: Path | None  # output_dir/model: the final weights via save_model
    nonfinite_skips: int  # updates skipped for non-finite losses


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


def mean_dicts(records: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means over the records that have the key (keys in sorted order)."""
    keys = sorted({k for r in records for k in r})
    return {
        k: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r) for k in keys
    }


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in every transformers model inside `model` (a causal
    LM, a reward/critic backbone, both of PPO's, under PEFT or not): each decoder layer keeps
    only its input and is recomputed, with the same keywords, in the backward pass.
    Non-reentrant, so frozen embeddings (LoRA) need no extra hook. Returns how many models
    were switched; a model that cannot checkpoint is a user error."""
    switched = 0
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and not module.is_gradient_checkpointing:
            if not module.supports_gradient_checkpointing:
                raise UserError(f"{type(module).__name__} does not support gradient_checkpointing")
            module.gradient_checkpointing_enable({"use_reentrant": False})
            switched += 1
    return switched


def prepare_for_training(
    model: nn.Module, cfg: TrainConfig, accelerator: Accelerator
) -> list[nn.Embedding]:
    """The memory switches a config turns on before the optimizer sees the model:

    - ``gradient_checkpointing``: each decoder layer recomputed in the backward pass
      (:func:`enable_gradient_checkpointing`);
    - ``keep_host_memory`` (CPU only): memory freed during a step stays with the process for
      the next one instead of being returned to the kernel and page-faulted back in
      (a process-wide glibc setting, :func:`keep_freed_host_memory`);
    - ``sparse_embedding_grads`` (one process only: DDP all-reduces dense gradients): the
      input embedding's gradient as the rows a batch used.

    Returns the embeddings switched to sparse gradients, for :meth:`Engine.close` to switch
    back."""
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.keep_host_memory and accelerator.device.type == "cpu":
        keep_freed_host_memory()
    if cfg.sparse_embedding_grads and accelerator.num_processes == 1:
        return use_sparse_embedding_grads(model)
    return []


class Engine:
    """Owns the accelerator, the (prepared) model, optimizer, scheduler, run folder, checkpoints.

    Args:
        cfg: the trainer's config (a :class:`TrainConfig` or subclass).
        model: the module to train (its trainable parameters go to the optimizer).
        optimizer: optional, default :func:`build_optimizer(model, cfg)`.
        save_model / load_model: ``fn(unwrapped_model, folder)`` hooks for the weights in a
            checkpoint (default: ``save_pretrained`` or a safetensors state dict).
        accelerator: optional, default ``Accelerator()``.

    Attributes: ``model`` (prepared, maybe DDP-wrapped: use for forward passes that train),
    ``unwrapped_model``, ``optimizer``, ``scheduler`` (after :meth:`set_total_steps`),
    ``state`` (:class:`TrainState`), ``run`` (:class:`RunDirectory`), ``checkpoints``
    (:class:`CheckpointManager`), ``accelerator``.

    Raises UserError when ``output_dir`` already holds a run and ``cfg.resume`` is off.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        save_model: ModelIO | None = None,
        load_model: ModelIO | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.cfg = cfg
        self.accelerator = accelerator or Accelerator()
        self.is_main = self.accelerator.is_main_process
        set_seed(cfg.seed)
        out = Path(cfg.output_dir)
        self.run = RunDirectory(out, is_main=False)  # a read-only view for the checks below
        resuming = self.run.has_run()
        if resuming and not cfg.resume:
            raise UserError(
                f"output_dir {out} already holds a run; pass --resume to continue it "
                "or choose another --output_dir"
            )
        if resuming:
            self._refuse_another_trainers_run()
        self.accelerator.wait_for_everyone()
        self.run = RunDirectory(out, is_main=self.is_main, tensorboard=cfg.report_to_tensorboard)
        if not resuming:  # a resumed run's config.yaml is rewritten once its checkpoint loaded
            self.run.write_config(cfg)
        self.checkpoints = CheckpointManager(
            out / "checkpoints", cfg.keep_last_checkpoints, is_main=self.is_main
        )
        self._save_model = save_model or default_save_model
        self._load_model = load_model or default_load_model
        self._sparse_embeddings = prepare_for_training(model, cfg, self.accelerator)
        optimizer = optimizer or build_optimizer(model, cfg)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.total_steps: int | None = None
        self.state = TrainState()
        self._extra: dict[str, Stateful] = {}
        self._micro = 0  # micro-batches in the open accumulation window
        self._window: list[dict[str, float]] = []  # metrics of the open window's micro-batches
        self._window_nonfinite = False
        self._log_buffer: list[dict[str, float]] = []  # per-update metrics since the last log
        self._last_lr = cfg.learning_rate
        self.last_train_record: dict[str, Any] = {}
        self.budget: TimeBudget | None = None  # see start_time_budget
        self._interrupt_requested = False  # a first Ctrl-C, see interruptible()
        self._last_saved_step: int | None = None

    # ------------------------------------------------------------ setup

    def _refuse_another_trainers_run(self) -> None:
        """A UserError when ``output_dir`` holds a run of another trainer (its config.yaml
        says which), before anything in the folder is touched."""
        was, now = self.run.trainer(), trainer_name(self.cfg)
        if was is not None and was != now:
            raise UserError(
                f"cannot resume {self.run.path}: it is a run of alignkit {was}, not of "
                f"alignkit {now}; continue it with `alignkit {was} --resume`, or choose "
                "another --output-dir"
            )

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def lr(self) -> float:
        """The learning rate the next update will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_total_steps(self, total_steps: int) -> None:
        """Create the scheduler: warm-up then decay over ``total_steps`` optimizer updates."""
        if total_steps < 1:
            raise ValueError("total_steps must be >= 1")
        self.total_steps = total_steps
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        self.scheduler = build_scheduler(inner, self.cfg, total_steps)
        self._last_lr = self.lr

    def scale_peak_learning_rates(self, scale: float) -> None:
        """Set every parameter group's peak learning rate to its configured one × ``scale``
        (a guard rollback lowers it); the schedule's shape stays, and the next update uses
        the scaled rate. Call after :meth:`set_total_steps`.

        The scheduler is a ``LambdaLR``: lr_t = base_lr · λ(t), where ``initial_lr`` is each
        group's configured peak (PPO's critic has its own)."""
        if self.scheduler is None:
            raise RuntimeError("call set_total_steps() before scale_peak_learning_rates()")
        groups = self.optimizer.param_groups
        self.scheduler.base_lrs = [group["initial_lr"] * scale for group in groups]
        self._apply_schedule()

    def relay_schedule(self, total_steps: int) -> None:
        """Lay the schedule out again over ``total_steps`` updates in all (a time budget
        fixed the run's length): warm-up and decay recomputed for the new length, the same
        peak(s), the updates already done kept. The next update uses the new curve."""
        if self.scheduler is None:
            raise RuntimeError("call set_total_steps() before relay_schedule()")
        peaks, last_lr = list(self.scheduler.base_lrs), self._last_lr
        self.set_total_steps(max(total_steps, 1))
        self._last_lr = last_lr  # the update just done used the old curve
        self.scheduler.base_lrs = peaks
        self.scheduler.last_epoch = self.state.step
        self._apply_schedule()

    def _apply_schedule(self) -> None:
        """Each group's learning rate from the scheduler's peaks and λ at the current step."""
        scheduler = self.scheduler
        for group, base, lr_lambda in zip(
            self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * lr_lambda(scheduler.last_epoch)

    # ------------------------------------------------------------ a time budget

    def start_time_budget(
        self,
        total: int,
        *,
        unit: str = "steps",
        updates_per_unit: int = 1,
        eval_every: int = 0,
        save_every: int = 0,
        cap: int | None = None,
    ) -> int:
        """Start watching ``cfg.time_budget`` (call after :meth:`resume`); returns the
        number of units (optimizer steps, or an online trainer's iterations of
        ``updates_per_unit`` updates) to run: ``total`` as planned, or the length a
        resumed run had fixed. Without a budget it changes nothing."""
        if not self.cfg.time_budget:
            return total
        self.budget = TimeBudget(
            parse_duration(self.cfg.time_budget),
            clock=self.run.elapsed,
            eval_every=eval_every,
            save_every=save_every,
            cap=cap,
        )
        self._budget_unit, self._updates_per_unit = unit, updates_per_unit
        fixed = self.state.extra.get("time_budget")
        if fixed is None:
            return total
        self.budget.step_seconds = float(fixed["unit_seconds"])
        self.relay_schedule(int(fixed["units"]) * updates_per_unit)
        return int(fixed["units"])

    def after_budgeted_unit(self, done: int, total: int) -> int:
        """After each unit: the number of units to run from now on. Once the first units
        are measured, the length that fits the budget (the schedule laid out over it);
        later, ``done`` if the budget is spent. Without a budget, ``total``."""
        budget = self.budget
        if budget is None:
            return total
        fixed = budget.after_step(done)
        unit = self._budget_unit
        if fixed is not None:
            self.relay_schedule(fixed * self._updates_per_unit)
            self.state.extra["time_budget"] = {"units": fixed, "unit_seconds": budget.step_seconds}
            self.run.log_event(
                "time_budget",
                self.state.step,
                f"{fixed} {unit} fit the budget of {budget.seconds:.0f} s "
                f"({budget.step_seconds:.3f} s each, measured)",
                units=fixed,
                unit=unit,
                unit_seconds=budget.step_seconds,
                budget_seconds=budget.seconds,
            )
            return fixed
        if done < total and budget.spent():
            self.run.log_event(
                "time_budget",
                self.state.step,
                f"stopped after {done} of {total} {unit}: the time budget is spent",
                units=done,
                unit=unit,
                budget_seconds=budget.seconds,
            )
            return done
        return total

    def timed(self, kind: str) -> contextlib.AbstractContextManager:
        """Time an evaluation (``kind="eval"``) or a checkpoint (``"save"``) for the budget."""
        return self.budget.timed(kind) if self.budget is not None else contextlib.nullcontext()

    def register_state(self, name: str, obj: Stateful) -> None:
        """Save ``obj.state_dict()`` in every checkpoint (``extra/<name>.pt``) and restore it on resume.

        Values must load with ``torch.load(weights_only=True)``: tensors, numbers, strings,
        lists, dicts. Register unwrapped modules (``accelerator.unwrap_model``), not DDP ones.
        Only the main process's object is saved.
        """
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"{name}: needs state_dict() and load_state_dict()")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"state name {name!r}: use letters, digits, '_' or '-'")
        self._extra[name] = obj

    # ------------------------------------------------------------ Ctrl-C

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """While training: a first Ctrl-C (SIGINT) asks the run to stop where a checkpoint
        is consistent, at the end of the update in progress (:meth:`stop_if_interrupted`);
        a second one stops it at once (KeyboardInterrupt, no checkpoint). Outside the main
        thread, or where SIGINT is ignored, it changes nothing."""
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or previous in (
            signal.SIG_IGN,
            None,
        ):
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:
            if self._interrupt_requested:
                raise KeyboardInterrupt
            self._interrupt_requested = True
            tqdm.write(
                "alignkit: interrupted: stopping after this update to write a checkpoint "
                "(Ctrl-C again to stop at once, without one)",
                file=sys.stderr,
            )

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def stop_if_interrupted(self) -> None:
        """Call where a checkpoint is consistent (after an update, between iterations): if
        Ctrl-C asked for a stop on any process, write a checkpoint (unless this step has
        one) and raise :class:`TrainingInterrupted`."""
        if not self._any_process(self._interrupt_requested):
            return
        step = self.state.step
        if self._last_saved_step == step:
            path = self.checkpoints.path_for(step)
        else:
            path = self.save_checkpoint()
        self.run.log_event("interrupted", step, f"stopped by Ctrl-C; checkpoint {path}")
        raise TrainingInterrupted(step, path)

    # ------------------------------------------------------------ one update

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[None]:
        """Wrap forward + :meth:`backward_and_step` of one micro-batch.

        Under DDP it skips the gradient all-reduce for all but the last micro-batch of a
        window (an optimisation only; results are the same without it).
        """
        last = self._micro + 1 >= self.cfg.gradient_accumulation_steps
        if last or self.accelerator.num_processes == 1:
            yield
        else:
            with self.accelerator.no_sync(self.model):
                yield

    def backward_and_step(
        self, loss: torch.Tensor, metrics: Mapping[str, Any] | None = None
    ) -> StepResult:
        """Backward one micro-batch; at the end of each accumulation window, clip and update.

        ``loss`` is this micro-batch's mean loss (it is divided by the accumulation steps here).
        ``metrics`` (floats or 0-d tensors) are averaged over the window and kept for
        :meth:`log_step_metrics`; ``loss`` is recorded as ``"loss"``. Every process must call
        this the same number of times. Raises :class:`NonFiniteLossError` (see module doc).
        """
        if self.scheduler is None:
            raise RuntimeError("call set_total_steps() (or fit()) before backward_and_step()")
        accum = self.cfg.gradient_accumulation_steps
        loss_value = _as_float(loss)
        if math.isfinite(loss_value):
            record = {"loss": loss_value}
            record.update({k: _as_float(v) for k, v in (metrics or {}).items()})
            self._window.append(record)
        else:
            self._window_nonfinite = True
        # Always backward, even a NaN: under DDP every process must join the all-reduce.
        self.accelerator.backward(loss / accum)
        self._micro += 1
        if self._micro < accum:
            return StepResult(stepped=False)
        return self._finish_window()

    def _any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def _clip_gradients(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Scale the gradients to a total L2 norm of at most `max_norm`; returns the norm
        before clipping. Without sharded gradients (one process or DDP), gradients already
        inside the bound are left alone instead of multiplied by 1.0 (that would be one more
        pass over every gradient, for nothing)."""
        sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA)
        if self.accelerator.distributed_type in sharded:
            return _as_float(self.accelerator.clip_grad_norm_(params, max_norm))
        self.accelerator.unscale_gradients()
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)
        grad_norm = _as_float(total)
        if math.isfinite(grad_norm) and grad_norm > max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return grad_norm

    def _finish_window(self) -> StepResult:
        cfg = self.cfg
        window, self._window = self._window, []
        nonfinite = self._any_process(self._window_nonfinite)
        self._window_nonfinite = False
        self._micro = 0
        grad_norm: float | None = None
        if not nonfinite:
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            params = [p for p in self.model.parameters() if p.requires_grad]
            densify_sparse_grads(params)  # an embedding's rows (sparse_embedding_grads)
            grad_norm = self._clip_gradients(params, max_norm)
            nonfinite = not math.isfinite(grad_norm)  # same on every process (grads all-reduced)
        self._last_lr = self.lr
        pause_for_fault_tests("update", self.state.step + 1)
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        means = mean_dicts(window)
        if nonfinite:
            self.state.nonfinite_total += 1
            self.state.nonfinite_consecutive += 1
            self.run.log_event(
                "nonfinite_skip",
                self.state.step,
                "non-finite loss or gradient: update skipped",
                consecutive=self.state.nonfinite_consecutive,
                total=self.state.nonfinite_total,
            )
            if self.state.nonfinite_consecutive > cfg.max_consecutive_nonfinite:
                latest = self.checkpoints.latest()
                where = (
                    f"; last good checkpoint: {latest}" if latest else "; no checkpoint was saved"
                )
                message = (
                    f"training stopped at step {self.state.step}: the loss was NaN/Inf for "
                    f"{self.state.nonfinite_consecutive} steps in a row "
                    f"(max_consecutive_nonfinite={cfg.max_consecutive_nonfinite}){where}. "
                    "Try a lower --learning_rate or --max_grad_norm, or check the data."
                )
                self.run.log_event("stop", self.state.step, message, reason="nonfinite")
                raise NonFiniteLossError(message)
            return StepResult(stepped=True, skipped=True, metrics=means)
        self.state.nonfinite_consecutive = 0
        means["grad_norm"] = grad_norm if grad_norm is not None else 0.0
        self._log_buffer.append(means)
        return StepResult(stepped=True, skipped=False, grad_norm=grad_norm, metrics=means)

    # ------------------------------------------------------------ logging and evaluation

    def reduce_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Average a {name: number} dict over processes (every process must pass the same keys)."""
        values = {k: _as_float(v) for k, v in metrics.items()}
        if self.accelerator.num_processes == 1 or not values:
            return values
        keys = list(values)  # the tensor is built in sorted order; the result keeps the caller's
        t = torch.tensor([values[k] for k in sorted(keys)], dtype=torch.float64, device=self.device)
        reduced = dict(
            zip(sorted(keys), self.accelerator.reduce(t, reduction="mean").tolist(), strict=True)
        )
        return {k: reduced[k] for k in keys}

    def log(
        self, metrics: Mapping[str, Any], *, epoch: float | None = None, reduce: bool = True
    ) -> dict[str, Any]:
        """Write one metrics.jsonl record at the current step (averaged over processes)."""
        values = (
            self.reduce_metrics(metrics)
            if reduce
            else {k: _as_float(v) for k, v in metrics.items()}
        )
        return self.run.log_metrics(self.state.step, values, epoch=epoch, lr=self._last_lr)

    def log_step_metrics(self, *, epoch: float | None = None) -> dict[str, Any] | None:
        """Log the means of the per-update metrics since the last call; None if there were none."""
        buffer, self._log_buffer = self._log_buffer, []
        if not buffer:
            return None
        means = mean_dicts(buffer)
        ordered = {"loss": means.pop("loss")} if "loss" in means else {}
        ordered.update(means)
        self.last_train_record = self.log(ordered, epoch=epoch)
        return self.last_train_record

    def evaluate(self, eval_fn: EvalFn, *, epoch: float | None = None) -> dict[str, Any]:
        """Run ``eval_fn(unwrapped_model)`` in eval mode without gradients; log ``eval_*`` metrics."""
        model = self.unwrapped_model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.timed("eval"):
                metrics = eval_fn(model) or {}
        finally:
            model.train(was_training)
        named = {(k if k.startswith("eval_") else f"eval_{k}"): v for k, v in metrics.items()}
        values = self.reduce_metrics(named)
        return self.run.log_metrics(self.state.step, values, epoch=epoch)

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-<step>/`` atomically (call on every process); prune to K.

        Contents: ``model/`` (the save_model hook), ``optimizer.pt``, ``scheduler.pt``,
        ``rng_state_<rank>.pt`` (one per process), ``extra/<name>.pt`` (registered state),
        ``trainer_state.json`` (:class:`TrainState`).
        """
        latest = self.checkpoints.latest()
        then = f"; the last complete checkpoint is still {latest}" if latest else ""
        with self.timed("save"), writing_to(self.run.path, then=then):
            path = self._save_checkpoint()
        self._last_saved_step = self.state.step
        return path

    def _save_checkpoint(self) -> Path:
        acc = self.accelerator
        step = self.state.step
        tmp = self.checkpoints.tmp_path_for(step)
        acc.wait_for_everyone()
        if self.is_main:
            self.checkpoints.begin(step)
        acc.wait_for_everyone()
        try:
            save_torch(rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
            acc.wait_for_everyone()
            if self.is_main:
                self._save_model(self.unwrapped_model, tmp / "model")
                pause_for_fault_tests("checkpoint", step)
                save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")
                if self.scheduler is not None:
                    save_torch(self.scheduler.state_dict(), tmp / "scheduler.pt")
                if self._extra:
                    (tmp / "extra").mkdir()
                    for name, obj in self._extra.items():
                        save_torch(obj.state_dict(), tmp / "extra" / f"{name}.pt")
                self.state.elapsed = self.run.elapsed()
                (tmp / STATE_FILE).write_text(
                    json.dumps(asdict(self.state), indent=1), encoding="utf-8"
                )
                self.checkpoints.commit(tmp, step)
        except BaseException:
            if self.is_main:
                self.checkpoints.abort(tmp)
            raise
        acc.wait_for_everyone()
        path = self.checkpoints.path_for(step)
        self.run.log_event("checkpoint", step, str(path))
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimizer, scheduler, RNG, registered state and :attr:`state`."""
        path = Path(path)
        self._load_model(self.unwrapped_model, path / "model")
        self.optimizer.load_state_dict(load_torch(path / "optimizer.pt"))
        if self.scheduler is not None and (path / "scheduler.pt").exists():
            self.scheduler.load_state_dict(load_torch(path / "scheduler.pt"))
        for name, obj in self._extra.items():
            file = path / "extra" / f"{name}.pt"
            if not file.exists():
                raise UserError(f"checkpoint {path} has no saved state for {name!r}")
            obj.load_state_dict(load_torch(file))
        rng_file = path / f"rng_state_{self.accelerator.process_index}.pt"
        if not rng_file.exists():
            rng_file = path / "rng_state_0.pt"
        set_rng_state(load_torch(rng_file))
        self.state = TrainState(**json.loads((path / STATE_FILE).read_text(encoding="utf-8")))
        self.run.time_offset = self.state.elapsed
        self._micro, self._window, self._window_nonfinite, self._log_buffer = 0, [], False, []
        self._last_lr = self.lr

    def resume(self, *, data: dict[str, Any] | None = None) -> Path | None:
        """Load the latest checkpoint of ``output_dir`` if there is one (call after set_total_steps).

        ``data`` (fit's data key: examples, global batch, accumulation, seed) must equal the
        checkpoint's for the run to continue exactly; a change is a UserError raised before
        anything in the folder is rewritten. Then config.yaml is written again and
        metrics.jsonl records past the checkpoint's step are dropped (they will be logged
        again). Returns the checkpoint folder, or None when starting from scratch.
        """
        if self.scheduler is None:
            raise RuntimeError("call set_total_steps() before resume()")
        latest = self.checkpoints.latest()
        if latest is None:
            self.run.write_config(self.cfg)
            self.run.truncate_metrics_after(0)
            self.run.log_event("resume", 0, "no checkpoint found: starting from scratch")
            return None
        self.load_checkpoint(latest)
        saved = self.state.extra.get("data")
        if data is not None and saved is not None and saved != data:
            changed = ", ".join(k for k in data if saved.get(k) != data[k])
            raise UserError(
                f"cannot resume {self.cfg.output_dir} exactly: {changed} changed since the "
                f"checkpoint (was {saved}, now {data}); use the same settings or a new "
                "--output_dir"
            )
        self.run.write_config(self.cfg)
        self.run.truncate_metrics_after(self.state.step)
        self.run.log_event("resume", self.state.step, f"resumed from {latest}")
        return latest

    def save_model(self, directory: str | Path) -> Path:
        """Save the unwrapped model with the save_model hook (main process only), written
        beside ``directory`` and renamed into place (:func:`write_folder_atomically`)."""
        directory = Path(directory)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            latest = self.checkpoints.latest()
            then = f"; the last complete checkpoint is {latest}" if latest else ""
            with writing_to(self.run.path, then=then):
                write_folder_atomically(
                    directory, lambda tmp: self._save_model(self.unwrapped_model, tmp)
                )
        self.accelerator.wait_for_everyone()
        return directory

    # ------------------------------------------------------------ the offline loop

    def total_steps_for(self, num_examples: int) -> tuple[int, int]:
        """(optimizer updates for the run, micro-batches per process per epoch)."""
        cfg = self.cfg
        sampler = EpochBatchSampler(
            num_examples,
            cfg.batch_size,
            seed=cfg.seed,
            num_processes=self.accelerator.num_processes,
        )
        per_epoch = sampler.batches_per_epoch()
        if cfg.max_steps is not None:
            return cfg.max_steps, per_epoch
        total = cfg.num_epochs * per_epoch // cfg.gradient_accumulation_steps
        if total < 1:
            raise UserError(
                f"the training data ({num_examples} examples) is too small for one optimizer step "
                f"of batch_size {cfg.batch_size} x gradient_accumulation_steps "
                f"{cfg.gradient_accumulation_steps} x {self.accelerator.num_processes} process(es); "
                "lower them or add data"
            )
        return total, per_epoch

    def close(self) -> None:
        """End the run: close its logs and hand the model back as it was loaded (dense
        embedding gradients)."""
        restore_dense_embedding_grads(self._sparse_embeddings)
        self._sparse_embeddings = []
        self.run.close()

    def fit(
        self,
        train_dataset: Sequence[Any],
        collate_fn: Callable[[list[Any]], Any],
        loss_fn: LossFn,
        eval_fn: EvalFn | None = None,
        *,
        progress_metric: str | None = None,
    ) -> FitResult:
        """Train on a map-style dataset until ``max_steps`` (or ``num_epochs``) updates.

        Writes to ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (every ``log_every``
        updates: step, epoch, loss, grad_norm, the loss_fn metrics, lr, time; evaluation
        records with ``eval_*`` keys), ``events.jsonl``, ``tensorboard/``,
        ``checkpoints/step-N/`` every ``save_every`` updates and at the end, and the final
        weights in ``model/``. With ``cfg.resume`` it continues from the latest checkpoint:
        same data order (seeded per epoch), already-consumed batches skipped. With
        ``cfg.time_budget`` the number of steps is fixed after a few measured ones
        (:mod:`alignkit.train.time_budget`).
        """
        cfg = self.cfg
        acc = self.accelerator
        n = len(train_dataset)
        total, per_epoch = self.total_steps_for(n)
        self.set_total_steps(total)
        data_key = {
            "num_examples": n,
            "global_batch_size": cfg.batch_size * acc.num_processes,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "seed": cfg.seed,
        }
        if cfg.resume:
            self.resume(data=data_key)
        self.state.extra["data"] = data_key
        total = self.start_time_budget(
            total,
            eval_every=cfg.eval_every if eval_fn is not None else 0,
            save_every=cfg.save_every,
            cap=cfg.max_steps,
        )

        def epoch_float() -> float:
            return self.state.epoch + self.state.batch_in_epoch / per_epoch

        bar = tqdm(
            total=total,
            initial=self.state.step,
            disable=not self.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        eval_metrics: dict[str, Any] = {}
        last_eval_step = -1
        self.model.train()
        try:
            with self.interruptible():
                while self.state.step < total:
                    sampler = EpochBatchSampler(
                        n,
                        cfg.batch_size,
                        seed=cfg.seed,
                        epoch=self.state.epoch,
                        num_processes=acc.num_processes,
                        rank=acc.process_index,
                        start=self.state.batch_in_epoch,
                    )
                    loader = DataLoader(
                        train_dataset,
                        batch_sampler=sampler,
                        collate_fn=collate_fn,
                        num_workers=0,
                        generator=torch.Generator(),  # leave the global RNG alone
                    )
                    for batch in loader:
                        batch = send_to_device(batch, self.device)
                        with self.accumulate():
                            loss, metrics = loss_fn(self.model, batch)
                            result = self.backward_and_step(loss, metrics)
                        self.state.batch_in_epoch += 1
                        if not result.stepped:
                            continue
                        step = self.state.step
                        total = self.after_budgeted_unit(step, total)
                        bar.total = total
                        if step % cfg.log_every == 0 or step == total:
                            self.log_step_metrics(epoch=epoch_float())
                        if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
                            eval_metrics = self.evaluate(eval_fn, epoch=epoch_float())
                            last_eval_step = step
                        if cfg.save_every and step % cfg.save_every == 0 and step != total:
                            self.save_checkpoint()
                        bar.update(1)
                        if result.metrics:
                            postfix = {"loss": f"{result.metrics.get('loss', float('nan')):.4f}"}
                            if progress_metric and progress_metric in result.metrics:
                                postfix[progress_metric] = f"{result.metrics[progress_metric]:.4f}"
                            bar.set_postfix(postfix, refresh=False)
                        if step >= total:
                            break
                        self.stop_if_interrupted()
                    if self.state.batch_in_epoch >= per_epoch:
                        self.state.epoch += 1
                        self.state.batch_in_epoch = 0
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()
        if eval_fn is not None and last_eval_step != self.state.step:
            eval_metrics = self.evaluate(eval_fn, epoch=epoch_float())
        checkpoint = self.save_checkpoint()
        model_dir = self.save_model(Path(cfg.output_dir) / "model")
        self.run.log_event("finished", self.state.step, f"trained {self.state.step} steps")
        self.close()
        return FitResult(
            steps=self.state.step,
            train_metrics=dict(self.last_train_record),
            eval_metrics=dict(eval_metrics),
            checkpoint=checkpoint,
            model_dir=model_dir,
            nonfinite_skips=self.state.nonfinite_total,
        )
