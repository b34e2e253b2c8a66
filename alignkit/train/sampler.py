"""``EpochBatchSampler``: data order that depends only on (seed, epoch), sharded over processes.

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
from collections.abc import Iterator

import numpy as np
import torch


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
