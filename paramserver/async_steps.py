"""Exactly-once bookkeeping of ``async`` contributions: which steps of each rank were taken.

A rank's contributions are numbered by its step, 0, 1, 2, ...; they may arrive out of order
(two of one rank's contributions in flight, the earlier one a straggler, or a re-proposal
through a new leader). Per rank the record is a watermark ``w`` (every step <= ``w`` was
taken) and the steps above ``w + 1`` taken early; that early set holds no more steps than
the rank had in flight. A rank never seen has watermark -1.

The records are plain dicts (``rank -> watermark``, ``rank -> sorted early steps``), never
mutated: ``record`` returns new ones, so a reader iterating an old one never races.
"""

from __future__ import annotations

from collections.abc import Mapping

Watermarks = Mapping[int, int]
Early = Mapping[int, tuple[int, ...]]


def taken(watermarks: Watermarks, early: Early, rank: int, step: int) -> bool:
    """Whether ``rank``'s ``step`` was already taken (a duplicate: apply it no more)."""
    return step <= watermarks.get(rank, -1) or step in early.get(rank, ())


def record(watermarks: Watermarks, early: Early, rank: int,
           step: int) -> tuple[dict[int, int], dict[int, tuple[int, ...]]]:
    """New records with ``rank``'s ``step`` taken (it must not be ``taken`` yet)."""
    mark = watermarks.get(rank, -1)
    pending = sorted({*early.get(rank, ()), step})
    while pending and pending[0] == mark + 1:
        mark = pending.pop(0)
    marks = {**watermarks, rank: mark}
    ahead = {r: s for r, s in early.items() if r != rank}
    if pending:
        ahead[rank] = tuple(pending)
    return marks, ahead
