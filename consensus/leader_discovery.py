"""Leader discovery of a ``RaftGroup`` client: which replica a call goes to.

The client remembers the leader it last found. Without one it asks every replica for its
status and takes the first leader that answers, or a follower's hint, unless the hint
names a replica that recently failed a call as dead or restarting (it is *suspect* for
``_SUSPECT_S``). A NotLeaderError's hint names the next leader to try, and a call left
unanswered for ``_HEDGE_S`` makes the client ask the others whether one of them now leads.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ray

from consensus.errors import ProposalTimeoutError

__all__ = ["LeaderDiscovery"]

_HEDGE_S = 0.3  # a call unanswered this long makes the client check for another leader
_SUSPECT_S = 1.0  # after a replica failed a call as dead, ignore hints naming it this long


class LeaderDiscovery:
    """The known leader of group ``name`` among ``handles`` (the group's members by replica
    index, the group's own dict, which it keeps current) and how to find a new one."""

    def __init__(self, name: str, handles: dict[int, Any]) -> None:
        self.name = name
        self._handles = handles
        self.leader: int | None = None
        self._suspect: dict[int, float] = {}  # replica index -> avoid its hints until then

    def target(self, remaining: float, any_replica: bool) -> int | None:
        """The replica to send to: the known leader, else one found by a status round of
        at most ``min(remaining, 0.5)`` seconds; with ``any_replica``, any live replica when
        no leader answered. None: none found this round."""
        if self.leader is not None and self.leader in self._handles:
            return self.leader
        # Ask everyone; take the first leader that answers (a dead or restarting replica
        # must not delay discovery), else the highest-term leader among all answers.
        # A follower's ``leader`` field is a hint too. Once a majority answered without naming
        # a leader, an election is under way: give up this round (the caller retries soon).
        pending = [self._handles[i].status.remote() for i in sorted(self._handles)]
        majority = len(pending) // 2 + 1
        deadline = time.monotonic() + min(remaining, 0.5)
        alive: list[int] = []
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            for ref in ready:
                try:
                    status = ray.get(ref, timeout=0)
                except Exception:
                    continue
                alive.append(status["index"])
                hint = status["index"] if status["role"] == "LEADER" else status["leader"]
                if hint is not None and hint in self._handles and (
                        status["role"] == "LEADER" or not self.is_suspect(hint)):
                    self.leader = int(hint)
                    return self.leader
            if len(alive) >= majority:
                break
        return alive[0] if any_replica and alive else None

    def wait_or_switch(self, ref: Any, index: int, limit: float) -> tuple[bool, Any]:
        """Wait for ``ref`` (a call on replica ``index``) up to ``limit`` seconds; every
        ``_HEDGE_S`` without an answer, ask the others whether one of them now leads (a
        call queued on a dead or restarting leader can hang). (False, None): switched to
        that leader; the caller resends with the same seqs (safe: dedup). Raises the call's
        error, or GetTimeoutError."""
        until = time.monotonic() + limit
        while (left := until - time.monotonic()) > 0:
            ready, _ = ray.wait([ref], timeout=min(_HEDGE_S, left))
            if ready:
                return True, ray.get(ref, timeout=0)
            others = [self._handles[i].status.remote() for i in self._handles if i != index]
            answered, _ = ray.wait(others, num_returns=len(others), timeout=_HEDGE_S / 2)
            for status_ref in answered:
                with contextlib.suppress(Exception):
                    status = ray.get(status_ref, timeout=0)
                    if status["role"] == "LEADER":
                        self.leader = int(status["index"])
                        return False, None
        raise ray.exceptions.GetTimeoutError(f"no answer from replica {index} in {limit} s")

    def is_suspect(self, index: int) -> bool:
        return self._suspect.get(index, 0.0) > time.monotonic()

    def discover(self, timeout: float) -> int:
        """Forget the known leader and find the current one (blocks up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.leader = None
            index = self.target(remaining, any_replica=False)
            if index is not None:
                return index
            time.sleep(min(0.02, remaining))
        raise ProposalTimeoutError(f"group {self.name}: no leader within {timeout} s")

    def not_leader(self, index: int, hint: int | None) -> None:
        """Replica ``index`` refused a call as not the leader, naming node ``hint``."""
        self.leader = hint - 1 if hint is not None and hint - 1 != index else None
        if self.leader is not None and self.leader not in self._handles:
            self.leader = None

    def failed(self, index: int, *, dead: bool) -> None:
        """A call on replica ``index`` failed and is retried; ``dead``: the replica was dead
        or restarting, so its hints are avoided for a while."""
        self.leader = None
        if dead:
            self._suspect[index] = time.monotonic() + _SUSPECT_S

    def forget(self, replica: int) -> None:
        """Replica ``replica`` left the group: it is no longer the known leader."""
        if self.leader == replica:
            self.leader = None
