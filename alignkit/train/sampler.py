"""Data order that depends only on (seed, epoch), sharded over processes: ``EpochBatchSampler``
for the offline trainers, ``PromptStream`` for the online ones' prompts, and
``minibatch_indices`` for the minibatches of an online iteration's experience.

Each epoch is a permutation of the dataset drawn from a generator seeded with
``seed * 1_000_003 + epoch``. The permutation is cut into *global* micro-batches of
``batch_size * num_processes`` examples; process ``rank`` takes the ``rank``-th slice of each.
So one process with batch 4, two processes with batch 2, and one process with batch 2 and
two accumulation steps all see the same examples in each optimizer step, and a resumed run
can skip exactly the micro-batches already consumed (``start``).

The last global micro-batch of an epoch may be short: it is split as evenly as possible, and
when it has fewer examples than processes it is padded from the start of the permutation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from alignkit.errors import UserError

T = TypeVar("T")


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The order of the examples in ``epoch``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


class EpochBatchSampler:
    """Batches of indices for one process in one epoch (a ``batch_sampler`` for DataLoader)."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        num_processes: int = 1,
        rank: int = 0,
        start: int = 0,
        shuffle: bool = True,
    ):
        if num_examples < 1:
            raise ValueError("the dataset is empty")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.num_processes = num_processes
        self.rank = rank
        self.start = start
        self.shuffle = shuffle

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    def batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (the same on every process)."""
        return math.ceil(self.num_examples / self.global_batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = epoch_permutation(self.num_examples, self.seed, self.epoch)
        else:
            order = list(range(self.num_examples))
        g = self.global_batch_size
        for b in range(self.start, self.batches_per_epoch()):
            chunk = order[b * g : (b + 1) * g]
            if len(chunk) == g:
                yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                continue
            if len(chunk) < self.num_processes:
                chunk = chunk + (order * self.num_processes)[: self.num_processes - len(chunk)]
            parts = np.array_split(np.array(chunk), self.num_processes)
            yield [int(i) for i in parts[self.rank]]


class PromptStream:
    """The prompts of each online iteration: the epoch's permutation (:func:`epoch_permutation`)
    cut into global batches of ``batch_size × num_processes``, process ``rank`` taking its
    slice; a partial last batch is dropped (every iteration has the same number of prompts).
    Iteration k's batch depends only on the seed and k, so a resumed run draws the same."""

    def __init__(
        self,
        prompts: Sequence[T],
        batch_size: int,
        seed: int,
        num_processes: int = 1,
        rank: int = 0,
    ):
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = len(self.prompts) // self.global_batch
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{len(self.prompts)} prompts are fewer than one rollout batch of "
                f"{batch_size} x {num_processes} process(es); lower --batch-size or add prompts"
            )

    def batch(self, iteration: int) -> list[T]:
        epoch, k = divmod(iteration, self.batches_per_epoch)
        order = epoch_permutation(len(self.prompts), self.seed, epoch)
        start = k * self.global_batch + self.rank * self.batch_size
        return [self.prompts[i] for i in order[start : start + self.batch_size]]


def minibatch_indices(
    n: int, num_minibatches: int, passes: int, *, seed: int, iteration: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Row indices of each minibatch: ``passes`` shuffled passes over n rows, seeded per
    iteration so a resumed run draws the same minibatches."""
    size = n // num_minibatches
    generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    for _ in range(passes):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, size):
            yield order[start : start + size]
