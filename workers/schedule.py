"""The batch schedule (docs/DESIGN.md, "Batch schedule"), a pure function of seed and global batch.

Epoch ``e`` uses ``numpy.random.default_rng([seed, e]).permutation(n_train)``; global batch
``b`` is positions ``[b*G, (b+1)*G)`` of it (a last partial batch is dropped); worker ``i`` of
``N`` gets the ``i``-th of ``N`` contiguous, equal slices. It never depends on ``N`` otherwise.

With M micro-batches the global batch is instead cut into M contiguous, equal micro-batches
(micro-batch ``j`` is positions ``[j*G/M, (j+1)*G/M)``), and task ``i`` of ``N`` computes
micro-batches ``[i*M // N, (i+1)*M // N)`` (``micro_range``): the micro-batches never depend
on ``N``, only which task computes them does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workers.errors import ScheduleError


@dataclass(frozen=True, kw_only=True)
class BatchSchedule:
    """Sample indices for every (epoch, batch, worker); stateless apart from a small cache.

    seed: the training seed. global_batch: G, samples per round. n_train: training samples.
    """

    seed: int
    global_batch: int
    n_train: int
    _cache: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                          compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise ScheduleError(f"global batch must be >= 1, got {self.global_batch}")
        if self.n_train < self.global_batch:
            raise ScheduleError(
                f"global batch {self.global_batch} exceeds the {self.n_train} training samples; "
                "lower --global-batch"
            )

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.n_train // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's sample order: ``default_rng([seed, epoch]).permutation(n_train)``."""
        if epoch < 0:
            raise ScheduleError(f"epoch must be >= 0, got {epoch}")
        order = self._cache.get(epoch)
        if order is None:  # O(n_train): computed once per epoch, not once per worker slice
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_train)
            order.flags.writeable = False
            self._cache.clear()
            self._cache[epoch] = order
        return order

    def global_batch_indices(self, epoch: int, batch: int) -> np.ndarray:
        """Sample indices of global batch ``batch`` of ``epoch`` (length G)."""
        if not 0 <= batch < self.batches_per_epoch:
            raise ScheduleError(
                f"batch {batch} out of range: an epoch has {self.batches_per_epoch} batches"
            )
        g = self.global_batch
        return self.permutation(epoch)[batch * g:(batch + 1) * g]

    def worker_indices(self, epoch: int, batch: int, rank: int, workers: int) -> np.ndarray:
        """Worker ``rank``'s contiguous slice of the global batch; needs ``workers`` | G."""
        check_split(self.global_batch, workers)
        if not 0 <= rank < workers:
            raise ScheduleError(f"rank {rank} out of range for {workers} workers")
        size = self.global_batch // workers
        return self.global_batch_indices(epoch, batch)[rank * size:(rank + 1) * size]

    def micro_batch_indices(self, epoch: int, batch: int, micro: MicroRange) -> np.ndarray:
        """Sample indices of micro-batches ``[micro.start, micro.stop)`` of a global batch,
        in order (``micro.size`` each); needs ``micro.total`` | G."""
        check_micro_batches(self.global_batch, micro.total)
        size = self.global_batch // micro.total
        return self.global_batch_indices(epoch, batch)[micro.start * size:micro.stop * size]

    def round_position(self, round_index: int) -> tuple[int, int]:
        """Map a global round number to ``(epoch, batch)``."""
        if round_index < 0:
            raise ScheduleError(f"round must be >= 0, got {round_index}")
        return divmod(round_index, self.batches_per_epoch)


def check_split(global_batch: int, workers: int) -> None:
    """Raise ``ScheduleError`` unless ``workers`` evenly divides ``global_batch``."""
    if workers < 1 or global_batch % workers != 0:
        raise ScheduleError(
            f"global batch {global_batch} must split into {workers} equal worker slices; "
            "pick a global batch that is a multiple of --workers"
        )


@dataclass(frozen=True, kw_only=True)
class MicroRange:
    """The contiguous micro-batches ``[start, stop)`` of ``total`` that one task computes."""

    start: int
    stop: int
    total: int

    @property
    def count(self) -> int:
        """Micro-batches in the range."""
        return self.stop - self.start


def micro_range(rank: int, workers: int, micro_batches: int) -> MicroRange:
    """Task ``rank`` of ``workers``'s micro-batches ``[rank*M // N, (rank+1)*M // N)``;
    needs ``1 <= workers <= micro_batches``."""
    if not 1 <= workers <= micro_batches:
        raise ScheduleError(
            f"{workers} workers cannot share {micro_batches} micro-batches (each task computes "
            "at least one); lower --workers or raise --micro-batches")
    if not 0 <= rank < workers:
        raise ScheduleError(f"rank {rank} out of range for {workers} workers")
    return MicroRange(start=rank * micro_batches // workers,
                      stop=(rank + 1) * micro_batches // workers, total=micro_batches)


def check_micro_batches(global_batch: int, micro_batches: int) -> None:
    """Raise ``ScheduleError`` unless ``micro_batches`` evenly divides ``global_batch``."""
    if micro_batches < 1 or global_batch % micro_batches != 0:
        raise ScheduleError(
            f"global batch {global_batch} must split into {micro_batches} equal micro-batches; "
            "pick a --global-batch that is a multiple of --micro-batches"
        )
