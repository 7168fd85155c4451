"""How many sync rounds the driver keeps in flight: ``DEPTH``, fewer for a large model.

Every round in flight holds its gradients (one copy of the model per worker) and the
parameters its step will publish (one more copy) in Ray's object store, and the driver
keeps them until the round is committed, to replay it after a fault. Three rounds of a
small model cost nothing and keep the driver off the critical path; three rounds of a
124M-parameter model with two workers are 4.5 GB. The depth therefore shrinks so that the
rounds in flight take at most ``STORE_SHARE`` of the object store, but never below 2: the
next round's gradients are computed while the previous one commits, which is the point of
the pipeline.
"""

from __future__ import annotations

DEPTH = 3
"""Rounds submitted ahead. 3 keeps the driver off the critical path: while it handles round
r's commit, round r+2's tasks are already queued on round r+1's answers."""
MIN_DEPTH = 2
STORE_SHARE = 0.4
"""The share of the object store the rounds in flight may fill."""


def round_bytes(parameter_bytes: int, workers: int) -> int:
    """Object-store bytes one round in flight holds: every worker's gradients plus the
    parameters its step publishes."""
    return (workers + 1) * parameter_bytes


def pipeline_depth(parameter_bytes: int, workers: int, store_bytes: float | None) -> int:
    """Rounds to keep in flight (``DEPTH`` down to ``MIN_DEPTH``) for a model of
    ``parameter_bytes`` trained by ``workers`` tasks per round, with an object store of
    ``store_bytes`` (None: unknown, ``DEPTH``)."""
    per_round = round_bytes(parameter_bytes, workers)
    if not store_bytes or per_round <= 0:
        return DEPTH
    fits = int(STORE_SHARE * store_bytes // per_round)
    return max(MIN_DEPTH, min(DEPTH, fits))
