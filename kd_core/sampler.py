"""Which rows each process trains on at each step, and the seeds of every random draw: pure
functions of (seed, step), so a resumed run draws exactly what an uninterrupted one would.

Global batch g of a run is batch g % n_batches of epoch g // n_batches (incomplete tail batches
are dropped so every step has the same size). It is split into micro-batches; process r takes
micro-batches r, r + world, r + 2*world, ... Micro-batch j of global batch g has its own masking
seed and its own dropout/sampling seed, whichever process runs it: 1 process with gradient
accumulation draws the same masks and dropout as N processes with the same global batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import ConfigError
from .errors import UserError

Collate = Callable[[list, torch.Generator], dict]
MASKING, MODEL = 0, 1  # the two random streams of a micro-batch: the collator's masks; dropout and sampling


def micro_batch_seed(seed: int, global_batch: int, micro: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, global_batch, micro, stream]).generate_state(1)[0])


def check_batch_split(batch_size: int, micro_batch_size: int, world: int) -> None:
    if batch_size % (micro_batch_size * world):
        raise ConfigError(f"train.batch_size={batch_size} must be a multiple of micro_batch_size "
                          f"({micro_batch_size}) x processes ({world})")


class GlobalBatchSampler:
    """Yields this process's micro-batches of (row index, masking seed), global batch by global batch."""

    def __init__(self, n_rows: int, batch_size: int, micro_batch_size: int, rank: int, world: int,
                 seed: int, start_batch: int = 0, shuffle: bool = True, lengths: np.ndarray | None = None):
        check_batch_split(batch_size, micro_batch_size, world)
        self.n_batches = n_rows // batch_size
        if self.n_batches == 0:
            raise UserError(f"the dataset has {n_rows} rows, fewer than one batch of {batch_size}; "
                            "lower train.batch_size or give more data")
        self.n_rows, self.batch_size, self.micro = n_rows, batch_size, micro_batch_size
        self.rank, self.world, self.seed, self.start, self.shuffle = rank, world, seed, start_batch, shuffle
        self.lengths = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.long)
        self._epoch, self._order = -1, None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Row order of an epoch. With lengths: shuffled, then sorted by length inside windows of 50
        batches, cut into batches, and the batches shuffled (DistilBERT-style length grouping)."""
        if not self.shuffle:
            return torch.arange(self.n_rows)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n_rows, generator=gen)
        if self.lengths is None:
            return order
        used = order[:self.n_batches * self.batch_size]
        window = 50 * self.batch_size
        chunks = [c[torch.argsort(self.lengths[c], stable=True)] for c in used.split(window)]
        batches = torch.cat(chunks).view(self.n_batches, self.batch_size)
        return batches[torch.randperm(self.n_batches, generator=gen)].flatten()

    def __iter__(self):
        g = self.start
        while True:
            epoch, b = divmod(g, self.n_batches)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self.epoch_order(epoch)
            micro = self._order[b * self.batch_size:(b + 1) * self.batch_size].view(-1, self.micro)
            for j in range(self.rank, len(micro), self.world):
                s = micro_batch_seed(self.seed, g, j, MASKING)
                yield [(int(i), s) for i in micro[j]]
            g += 1


class _SeededRows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        index, seed = key
        return self.rows[index], seed


class _SeededCollate:
    def __init__(self, collate: Collate):
        self.collate = collate

    def __call__(self, items):
        return self.collate([row for row, _ in items], torch.Generator().manual_seed(items[0][1]))


def seeded_loader(rows: Sequence, collate: Collate, sampler: GlobalBatchSampler, num_workers: int,
                  pin_memory: bool) -> DataLoader:
    """Batches of `rows` in the sampler's order; each micro-batch collated with its own masking seed
    (workers draw nothing from the global RNG that a batch depends on)."""
    return DataLoader(_SeededRows(rows), batch_sampler=sampler, collate_fn=_SeededCollate(collate),
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False)
