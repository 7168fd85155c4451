"""Learning of a lost shard leader sooner than Ray reports it.

When a shard leader's process dies, its followers see its connections close and elect a
new leader within tens of milliseconds (``RaftNode.peer_gone``). The driver, though, waits
on that leader's answers to the rounds in flight, and Ray fails those calls only once it
learnt of the death itself: about 1.5 s later on a loaded machine, during which no round
completes. A ``LeaderWatch`` closes that gap. While a round is late (no answer for
``every_s``, a few typical rounds), it asks every replica for its Raft term
(``ParameterServer.terms``, which never waits for a replica that is down); a shard whose
replicas moved to a term above the one its leader answered under has a new leader, and the
wait ends with ``NotLeaderError``, which the round loop recovers from as from any lost
leader. A healthy leader keeps its term, so a slow round never looks like a lost one: with
pre-vote and check-quorum, a term rises only when a leader is replaced. The same probe
runs while the server waits for a version at a barrier (``ParameterServer.wait_version``'s
``watch``), where the server re-submits to the moved shards itself.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import ray

from consensus.errors import NotLeaderError

__all__ = ["LeaderWatch"]

PROBE_MIN_S = 0.2
"""The least time a round waits before the watch asks for terms."""
PROBE_ROUNDS = 4.0
"""A round is late once it waited this many typical rounds (and ``PROBE_MIN_S``)."""
TERMS_WAIT_S = 0.1
"""How long one probe waits for the replicas' answers (a replica that is down never does)."""


class _Terms(Protocol):
    def terms(self, wait_s: float) -> list[int]: ...


class LeaderWatch:
    """The terms the shard leaders answered under, and ``get``, which watches them."""

    def __init__(self, server: _Terms, *, min_s: float = PROBE_MIN_S) -> None:
        self._server = server
        self._min_s = min_s
        self._known: list[int] | None = None  # per shard; None until a round answered
        self._walls: deque[float] = deque(maxlen=16)
        self.probes = 0

    @property
    def every_s(self) -> float:
        """How long a round waits before each probe."""
        typical = statistics.median(self._walls) if self._walls else 0.0
        return max(self._min_s, PROBE_ROUNDS * typical)

    def answered(self, terms: Sequence[int], wall_s: float) -> None:
        """A round completed in ``wall_s``; its shard leaders answered under ``terms``."""
        self._walls.append(wall_s)
        if self._known is None or len(self._known) != len(terms):
            self._known = [int(t) for t in terms]
        else:
            self._known = [max(k, int(t)) for k, t in zip(self._known, terms, strict=True)]

    def refresh(self) -> None:
        """After a recovery: the terms are those the replicas report now (the new leaders')."""
        terms = self._server.terms(TERMS_WAIT_S)
        self._known = terms if all(t >= 0 for t in terms) else None

    def get(self, refs: Sequence[Any], timeout: float) -> list[Any]:
        """``ray.get(refs, timeout=timeout)``, probing the terms each ``every_s`` meanwhile.
        Raises NotLeaderError once a shard's term rose (its leader was replaced), Ray's
        GetTimeoutError when ``timeout`` passed, or the first error among ``refs``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            known = self._known
            if known is None or left <= self.every_s:
                return list(ray.get(list(refs), timeout=max(0.0, left)))
            try:
                return list(ray.get(list(refs), timeout=self.every_s))
            except ray.exceptions.GetTimeoutError:
                pass
            moved = self.moved()
            if moved:
                raise NotLeaderError(
                    f"the leader of shard {', '.join(map(str, moved))} was replaced (terms "
                    f"{[known[s] for s in moved]} -> {[self._known[s] for s in moved]})"
                    if self._known is not None else "a shard leader was replaced")

    def moved(self) -> list[int]:
        """Probe once: the shards whose term rose above the known one (their leader was
        replaced). Their new terms become the known ones, so each change is told once.
        Nothing is known before a round answered: then nothing moved."""
        known = self._known
        if known is None:
            return []
        self.probes += 1
        terms = self._server.terms(TERMS_WAIT_S)
        self._known = [max(k, t) for k, t in zip(known, terms, strict=True)]
        return [s for s, (k, t) in enumerate(zip(known, terms, strict=True)) if t > k]
