"""Replacing a group member safely: add first, then remove (thesis §4.2.1, §4.3).

A replacement is three single-server changes, each of which may be retried or resumed:

1. ``ADD_LEARNER new``: a fresh replica (empty storage) receives the state, by snapshot,
   without counting toward any quorum;
2. once its match reached the leader's commit index, ``PROMOTE new``;
3. ``REMOVE old``, then the old actor is stopped.

Removing first would need a quorum of the smaller group: with one other voter down, the
removal itself could not commit and the shard would stall. Before each step the leader's
view is checked: the group after the step must keep a quorum of live, caught-up voters
(answering, and holding every committed entry), otherwise ``QuorumUnsafeError`` is raised and
nothing changes. A replica that lost its storage still counts: it stores and acknowledges
what it receives (it only never votes). A step that is already done (its answer was lost)
succeeds on the replica, and a replacement interrupted after any step is resumed by the
next call for the same member.

The group talks to Ray through :class:`MemberOps`; tests drive it with a fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consensus.errors import ProposalTimeoutError, QuorumUnsafeError
from consensus.types import ConfChangeKind

__all__ = ["GroupView", "MemberOps", "Replacer", "due_for_replacement"]

_POLL_S = 0.05


class MemberOps(Protocol):
    """What a replacement needs from the group (``RaftGroup`` implements it with Ray)."""

    def statuses(self) -> list[dict[str, Any]]:
        """Each member's ``status()`` (``alive=False`` for one that did not answer)."""
        ...

    def change(self, kind: ConfChangeKind, replica: int, timeout: float) -> None:
        """Commit one membership change through the leader (retried; a done one succeeds)."""
        ...

    def spawn_joiner(self, like: int, timeout: float) -> int:
        """Start a fresh replica (empty storage) where ``like`` ran; its index."""
        ...

    def stop(self, replica: int) -> None:
        """Kill replica ``replica`` for good and forget its handle (no-op if unknown)."""
        ...


@dataclass(frozen=True)
class GroupView:
    """The leader's view of the membership, from one status round."""

    leader: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    alive: frozenset[int]
    caught_up: frozenset[int]  # live members holding every entry the leader committed

    @classmethod
    def of(cls, statuses: Sequence[dict[str, Any]], name: str) -> GroupView:
        """The view of the leader among ``statuses``; ProposalTimeoutError if none leads."""
        leaders = [s for s in statuses if s.get("alive") and s.get("role") == "LEADER"]
        if not leaders:
            raise ProposalTimeoutError(f"group {name}: no replica leads right now; retry once "
                                       "a leader is elected (see RaftGroup.status())")
        lead = max(leaders, key=lambda s: int(s["term"]))
        alive = frozenset(int(s["index"]) for s in statuses if s.get("alive"))
        commit = int(lead["commit"])
        matches = {int(k): int(v) for k, v in lead.get("matches", {}).items()}
        caught = {int(lead["index"])} | {m for m, match in matches.items()
                                         if m in alive and match >= commit}
        return cls(int(lead["index"]), tuple(lead["voters"]), tuple(lead.get("learners", ())),
                   alive, frozenset(caught))

    def members(self) -> set[int]:
        return {*self.voters, *self.learners}

    def require_quorum(self, voters_after: set[int], name: str, step: str) -> None:
        """QuorumUnsafeError unless a majority of ``voters_after`` is live and caught up."""
        ready = sorted(v for v in voters_after if v in self.caught_up)
        need = len(voters_after) // 2 + 1
        if len(ready) < need:
            missing = sorted(voters_after - set(ready))
            raise QuorumUnsafeError(
                f"group {name}: refusing to {step}: the voters after it would be "
                f"{sorted(voters_after)}, of which only {ready} are live and caught up "
                f"(a quorum needs {need}); bring back or wait for {missing} first. "
                "Nothing was changed.")


def due_for_replacement(statuses: Sequence[dict[str, Any]], voters: Sequence[int],
                        dead_since: dict[int, float], now: float,
                        grace_s: float | None) -> list[int]:
    """The voters to replace: those that report ``lost_state`` (first), then those that
    answered no status since ``dead_since[index]`` for longer than ``grace_s``."""
    by_index = {int(s["index"]): s for s in statuses}
    lost = [v for v in voters if by_index.get(v, {}).get("lost_state")]
    dead: list[int] = []
    if grace_s is not None:
        dead = [v for v in voters if v not in lost and not by_index.get(v, {}).get("alive")
                and v in dead_since and now - dead_since[v] > grace_s]
    return [*sorted(lost), *sorted(dead)]


class Replacer:
    """Runs replacements for one group, remembering each unfinished one (old -> new) so
    that a later call resumes it instead of starting over."""

    def __init__(self, ops: MemberOps, name: str,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ops, self.name = ops, name
        self._clock, self._sleep = clock, sleep
        self.pending: dict[int, int] = {}  # old -> new, not finished yet

    def replace(self, old: int, timeout: float) -> int:
        """Replace member ``old`` (add a learner, promote it, remove ``old``, stop it);
        returns the new member's index. Raises QuorumUnsafeError (changing nothing) when
        a step would leave no quorum of live, caught-up voters, ProposalTimeoutError when
        the deadline passes (the next call resumes where this one stopped)."""
        deadline = self._clock() + timeout
        view = GroupView.of(self.ops.statuses(), self.name)
        new = self.pending.get(old)
        if old not in view.members():
            self.ops.stop(old)  # removed already: its answer was lost
            self.pending.pop(old, None)
            if new is None:
                raise ValueError(f"replica {old} is not a member of {self.name}")
            return new
        if new is not None and new not in view.members() | view.alive:
            self.ops.stop(new)  # spawned earlier, never joined, gone since: start another
            new = None
        if new is None:
            view.require_quorum(set(view.voters), self.name, f"add a learner for {old}")
            new = self.ops.spawn_joiner(old, self._left(deadline))
            self.pending[old] = new
        if new not in view.voters:
            if new not in view.learners:
                self.ops.change(ConfChangeKind.ADD_LEARNER, new, self._left(deadline))
            view = self._wait_caught_up(new, deadline)
            view.require_quorum({*view.voters, new}, self.name, f"promote replica {new}")
            self.ops.change(ConfChangeKind.PROMOTE, new, self._left(deadline))
            view = GroupView.of(self.ops.statuses(), self.name)
        view.require_quorum(set(view.voters) - {old}, self.name, f"remove replica {old}")
        self.ops.change(ConfChangeKind.REMOVE, old, self._left(deadline))
        self.ops.stop(old)
        del self.pending[old]
        return new

    def _left(self, deadline: float) -> float:
        left = deadline - self._clock()
        if left <= 0:
            raise ProposalTimeoutError(f"group {self.name}: replacement did not finish in time; "
                                       "the next heal resumes it")
        return left

    def _wait_caught_up(self, new: int, deadline: float) -> GroupView:
        """Poll until learner ``new`` holds every committed entry (it got the snapshot)."""
        while True:
            view = GroupView.of(self.ops.statuses(), self.name)
            if new in view.caught_up:
                return view
            if self._clock() >= deadline:
                raise ProposalTimeoutError(
                    f"group {self.name}: learner {new} did not catch up in time; the next "
                    "heal resumes the replacement")
            self._sleep(_POLL_S)
