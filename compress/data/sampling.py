"""`EpochShuffle`: a training order drawn from ``(seed, epoch)`` alone, resumable mid-epoch.

Example:
    >>> from compress.data.sampling import EpochShuffle
    >>> sampler = EpochShuffle(6, seed=0)
    >>> sampler.set_epoch(1)
    >>> order = list(sampler)
    >>> sampler.resume(1, 4)  # a run resumed after its first 4 rows of epoch 1 sees the last 2
    >>> list(sampler) == order[4:] and list(sampler) == order
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class EpochShuffle(DistributedSampler):
    """A permutation drawn from ``(seed, epoch)`` alone: the same order after a resume as without one.

    Lightning calls ``set_epoch`` at each epoch start. ``resume(epoch, start)`` makes the next pass over
    ``epoch`` begin at position ``start`` of this process's rows: a run resumed mid-epoch sees the rows
    it had not seen yet, as an uninterrupted run would. With ``lengths``, each span of ``BUCKET_SPAN``
    global batches of the permutation is sorted by length and cut into batches, and the full batches are
    shuffled (a short last batch stays last). Under DDP (``num_replicas`` > 1) every global batch of
    ``batch_size x num_replicas`` rows is cut into one slice per rank, so the ranks together train on
    the rows one process would with the global batch size; the order is padded by repeating its start
    to whole global batches, as `DistributedSampler` pads. It is a `DistributedSampler` so that
    Lightning uses it as it is instead of wrapping (and reshuffling) it.

    Args:
        size: number of rows.
        seed: seed of every epoch's permutation.
        lengths: each row's length in tokens, to bucket rows of similar length; None: no bucketing.
        batch_size: rows per batch of one process.
        num_replicas: number of processes (DDP world size).
        rank: this process's rank.
    """

    BUCKET_SPAN = 50

    def __init__(
        self,
        size: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # explicit replicas and rank: no process group needed; the rows are indices, so a range will do
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.lengths, self.batch_size = size, lengths, batch_size
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, start: int) -> None:
        """Makes the next pass over ``epoch`` begin at position ``start`` of this process's rows."""
        self._resume = (epoch, start) if start > 0 else None

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            order = self._bucketed(order, generator)
        if self.num_replicas > 1:
            order = self._shard(order)
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        self._resume = None
        return iter(order)

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.size
        return -(-self.size // (self.batch_size * self.num_replicas)) * self.batch_size

    def _bucketed(self, order: list[int], generator: torch.Generator) -> list[int]:
        size = self.batch_size * self.num_replicas
        span = size * self.BUCKET_SPAN
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        short = batches.pop() if len(batches[-1]) < size else []
        shuffled = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
        return [i for batch in shuffled for i in batch] + short

    def _shard(self, order: list[int]) -> list[int]:
        step = self.batch_size * self.num_replicas
        total = -(-len(order) // step) * step
        order = (order * (total // len(order) + 1))[:total]
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [i for k in range(0, total, step) for i in order[k + lo : k + hi]]
