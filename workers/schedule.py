"""The batch schedule (docs/DESIGN.md, "Batch schedule"), a pure function of seed and global batch.

Epoch ``e`` uses ``numpy.random.default_rng([seed, e]).permutation(n_train)``; global batch
``b`` is positions ``[b*G, (b+1)*G)`` of it (a last partial batch is dropped); worker ``i`` of
``N`` gets the ``i``-th of ``N`` contiguous, equal slices. It never depends on ``N`` otherwise.
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
