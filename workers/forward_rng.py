"""The randomness of a gradient task's forward pass, as a function of (seed, round, rank).

Dropout masks and every other draw a model makes from torch's generator come from the
generator seeded by :func:`forward_seed` right before the forward of rank ``k``'s slice of
round ``t`` (docs/DESIGN.md, "Randomness"). A task runs one forward, so the rank is also
the index of the round's micro-batch. The draws do not depend on what the worker process
ran before, so a retried, replayed, failed-over or resumed task draws the same bits.
The process's own generator state is saved before and restored after
(``torch.random.fork_rng``): seeding a forward disturbs nothing else in the process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_TAG = "raftps-forward"
_SEED_MASK = (1 << 63) - 1


def forward_seed(seed: int, round: int, rank: int) -> int:
    """The generator seed of rank ``rank``'s forward in round ``round`` of a job seeded
    ``seed``: the first 8 bytes (little-endian) of SHA-256 of the ASCII text
    ``raftps-forward:<seed>:<round>:<rank>``, top bit cleared (a value in [0, 2**63))."""
    text = f"{_TAG}:{int(seed)}:{int(round)}:{int(rank)}".encode("ascii")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & _SEED_MASK


@contextmanager
def seeded_forward(seed: int, round: int, rank: int,
                   device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator (and ``device``'s, a CUDA device) seeded
    with ``forward_seed(seed, round, rank)``; their states are restored afterwards."""
    cuda = device is not None and device.type == "cuda"
    index = (device.index if device is not None and device.index is not None
             else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        value = forward_seed(seed, round, rank)
        torch.default_generator.manual_seed(value)
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(value)
        yield
