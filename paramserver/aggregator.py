"""The round aggregator: turns worker contributions into one Raft command per round.

It is a plain single-threaded object living on a shard leader (a Ray actor method runs one at
a time). Admission needs no lock: the open round lives in one slot, and a contribution is
admitted only if its round id compares equal to a slot the mode allows (compare-and-set on the
round id); the contribution table is keyed by rank, so a duplicate is an idempotent no-op.
Sums are taken in canonical rank order by a fixed pairwise tree, never in arrival order, so a
round's command is bitwise identical however the network ordered the messages.
Every rejection raises before any state changes: bad input changes nothing.
A contribution also carries the shard's module buffers as its forward left them (keys
``buffers``); a round's command takes those of its lowest rank (rank 0 unless a backup-worker
round went without it), as DDP broadcasts rank 0's buffers, never a mix.

With micro-batches (``paramserver.microbatch``) a contribution is a ``TreeContribution``:
it is identified by its micro-batch range instead of its rank (the same range again is an
idempotent no-op, an overlapping one an OverlappingContributionError), the round completes
once its ranges cover micro-batches 0..M-1, and the sum is the fixed tree over micro-batch
index (``tree_total``), so the command is bitwise the same however many tasks computed it.
Its ``ranks`` are then the micro-batch indices 0..M-1 and its buffers those of micro-batch 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from paramserver.async_steps import record, taken
from paramserver.commands import Frame, RoundCommand
from paramserver.config import AggregatorConfig
from paramserver.errors import (
    FutureRoundError,
    GradientShapeError,
    InvalidContributionError,
    NonFiniteGradientError,
    NonFiniteSumError,
    RankOutOfRangeError,
    StaleRoundError,
    UnknownLayerError,
)
from paramserver.microbatch import Node, OverlappingContributionError, TreeContribution, tree_total
from paramserver.tree_sum import tree_sum

F32 = npt.NDArray[np.float32]
_RECENT_ROUNDS = 64  # completed rounds remembered to classify late duplicates


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What one ``submit`` did.

    ``accepted``: newly admitted; ``duplicate``: already admitted before (no-op);
    ``received``: contributions the round holds now; ``commands``: encoded RoundCommands now
    ready for Raft, in round order (each round appears exactly once over the aggregator's life).
    """

    round: int
    accepted: bool
    duplicate: bool
    received: int
    commands: tuple[Frame, ...] = ()


REUSE_SUM_BYTES = 16 << 20
"""Sum buffers up to this many bytes in all are reused from round to round."""


@dataclass
class _Admitted:
    """What the aggregator admitted for one open round."""

    contributions: dict[int, tuple[Mapping[str, F32] | None, int]] = field(default_factory=dict)
    nonfinite: bool = False
    deadline_passed: bool = False
    parts: dict[Node, tuple[TreeContribution | None, int]] = field(default_factory=dict)
    """Micro-batch rounds: the admitted contributions by micro-batch range."""
    micro_batches: int = 0
    """Micro-batch rounds: M (0 for a round of per-rank contributions)."""


def _all_finite(array: F32) -> bool:
    """Whether every element is finite: one float32 sum (NaN/Inf propagate into it), with
    the elementwise check only when that sum is not finite (a NaN/Inf, or a mere overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(array, axis=None)
    return bool(np.isfinite(total)) or bool(np.isfinite(array).all())


class RoundAggregator:
    """Admits contributions and emits one encoded RoundCommand per completed round.

    ``shapes`` maps each piece key of this shard to its shape; every contribution must carry
    exactly those keys: float32 gradient sums, and for the keys of ``buffers`` (buffer
    pieces, with their dtypes) the buffer values. ``start_round`` is the shard's applied
    version.
    """

    def __init__(
        self, config: AggregatorConfig, shapes: Mapping[str, tuple[int, ...]], *,
        start_round: int = 0, buffers: Mapping[str, np.dtype[Any]] | None = None,
    ) -> None:
        self.config = config
        self._shapes = {k: tuple(v) for k, v in shapes.items()}
        self._buffers = {k: np.dtype(v) for k, v in (buffers or {}).items()}
        unknown = sorted(set(self._buffers) - set(self._shapes))
        if unknown:
            raise UnknownLayerError(f"buffers {unknown[:3]} are not pieces of this shard")
        self._next = start_round  # lowest round not emitted yet (async: next sequence number)
        self._applied = start_round
        self._open: dict[int, _Admitted] = {}
        self._ready: dict[int, Frame] = {}
        self._done_ranks: dict[int, frozenset[int]] = {}
        self._done_ranges: dict[int, frozenset[Node]] = {}  # micro-batch rounds
        self._steps: dict[int, int] = {}  # async: per rank, the watermark of admitted steps
        self._early: dict[int, tuple[int, ...]] = {}  # async: admitted above the watermark
        self._sums: dict[str, F32] = {}  # per key: the reused output buffer of tree_sum

    @property
    def applied_version(self) -> int:
        """The newest applied version this aggregator was told of (``advance``)."""
        return self._applied

    @property
    def next_round(self) -> int:
        """The lowest round not yet emitted (the current slot in ``sync``)."""
        return self._next

    def received(self, round: int) -> tuple[int, ...]:
        """Ranks admitted so far for an open round (micro-batch rounds: the first
        micro-batch of each admitted range)."""
        entry = self._open.get(round)
        if entry is not None and entry.parts:
            return tuple(sorted(start for start, _ in entry.parts))
        return tuple(sorted(entry.contributions)) if entry else ()

    def submit(
        self, round: int, rank: int, grads: Mapping[str, F32] | TreeContribution, samples: int,
        param_version: int,
    ) -> SubmitOutcome:
        """Admit rank's gradient SUM over ``samples`` samples for ``round``.

        ``grads`` is either the per-rank contribution (piece key -> array) or a
        ``TreeContribution`` (micro-batch mode: identified by its micro-batch range, see the
        module docstring; InvalidContributionError or its subclass
        OverlappingContributionError when it does not fit the round).

        Raises RankOutOfRangeError, StaleRoundError, FutureRoundError, UnknownLayerError,
        GradientShapeError, InvalidContributionError or NonFiniteGradientError (policy
        ``error``; its subclass NonFiniteSumError when the contributions are finite but the
        round's float32 sum is not), changing nothing. Mutates only the aggregator; never
        mutates ``grads``.
        """
        if not 0 <= rank < self.config.workers:
            raise RankOutOfRangeError(
                f"rank {rank} is outside 0..{self.config.workers - 1}; the aggregator was "
                f"configured for workers={self.config.workers}"
            )
        if isinstance(grads, TreeContribution):
            return self._submit_tree(round, rank, grads, samples, param_version)
        if self.config.mode == "async":
            return self._submit_async(round, rank, grads, samples, param_version)
        duplicate = self._classify(round, rank, param_version)
        if duplicate is not None:
            return duplicate
        nonfinite = self._validate(round, rank, grads, samples)
        open_entry = self._open.get(round)
        if open_entry is not None and open_entry.parts:
            raise InvalidContributionError(
                f"round {round} holds micro-batch contributions; rank {rank}'s per-rank one "
                "cannot join it (every task of a job uses --micro-batches, or none)")
        fresh = round not in self._open
        entry = self._open.setdefault(round, _Admitted())
        was_nonfinite = entry.nonfinite
        entry.contributions[rank] = (None if nonfinite else grads, samples)
        entry.nonfinite = entry.nonfinite or nonfinite
        received = len(entry.contributions)
        try:
            commands = self._maybe_complete(round)
        except NonFiniteSumError:  # admit nothing: the round stays as it was
            del entry.contributions[rank]
            entry.nonfinite = was_nonfinite
            if fresh:
                del self._open[round]
            raise
        return SubmitOutcome(round, True, False, received, commands)

    def close_round(self, round: int) -> tuple[Frame, ...]:
        """Signal that ``round``'s straggler deadline passed (sync with backup workers).

        The round then completes as soon as it holds N-b contributions (now, if it does).
        Returns the commands that became ready. A round already emitted returns ().
        """
        if round < self._next or round in self._ready or self.config.mode == "async":
            return ()
        fresh = round not in self._open
        entry = self._open.setdefault(round, _Admitted())
        was_passed, entry.deadline_passed = entry.deadline_passed, True
        try:
            return self._maybe_complete(round)
        except NonFiniteSumError:
            entry.deadline_passed = was_passed
            if fresh:
                del self._open[round]
            raise

    def advance(self, applied_version: int) -> None:
        """The state machine applied rounds up to ``applied_version - 1``.

        Widens the ``ssp`` window, and fast-forwards past rounds a previous leader already
        committed (their open contributions are dropped).
        """
        self._applied = max(self._applied, applied_version)
        if applied_version > self._next:
            self._next = applied_version
            for stale in [r for r in self._open if r < applied_version]:
                del self._open[stale]
            for stale in [r for r in self._ready if r < applied_version]:
                del self._ready[stale]

    def _classify(self, round: int, rank: int, param_version: int) -> SubmitOutcome | None:
        """Duplicate → a no-op outcome; stale/future → raise; admissible → None."""
        done = self._done_ranks.get(round)
        if done is not None and rank in done:
            return SubmitOutcome(round, False, True, len(done))
        entry = self._open.get(round)
        if entry is not None and rank in entry.contributions:
            return SubmitOutcome(round, False, True, len(entry.contributions))
        self._check_window(round, f"rank {rank}", param_version)
        return None

    def _check_window(self, round: int, who: str, param_version: int) -> None:
        """Raise StaleRoundError / FutureRoundError unless ``round`` admits contributions."""
        if round < self._next or round in self._ready:
            raise StaleRoundError(
                f"round {round} already completed without {who} (next open round is "
                f"{self._next}); drop this gradient and compute one for round {self._next}"
            )
        limit = self._next if self.config.mode == "sync" else max(
            self._next, self._applied + self.config.staleness)
        if round > limit:
            raise FutureRoundError(
                f"round {round} is ahead of the newest open round {limit} (mode "
                f"{self.config.mode}, staleness {self.config.staleness}); wait for round "
                f"{self._next} to be applied"
            )
        if self.config.mode == "ssp" and param_version < round - self.config.staleness:
            raise StaleRoundError(
                f"{who}'s gradient for round {round} used parameters of version "
                f"{param_version}, older than round - staleness = "
                f"{round - self.config.staleness}; recompute it on fresher parameters"
            )

    def _submit_tree(self, round: int, rank: int, part: TreeContribution, samples: int,
                     param_version: int) -> SubmitOutcome:
        """Admit a micro-batch contribution (sync/ssp): keyed by its range, not its rank."""
        if self.config.mode == "async":
            raise InvalidContributionError(
                "micro-batch contributions need rounds: use --mode sync or ssp with "
                "--micro-batches")
        part.check()
        who = f"micro-batches {part.start}..{part.stop - 1}"
        done = self._done_ranges.get(round)
        if done is not None and part.range in done:
            return SubmitOutcome(round, False, True, len(done))
        entry = self._open.get(round)
        if entry is not None and part.range in entry.parts:
            return SubmitOutcome(round, False, True, len(entry.parts))
        self._check_window(round, who, param_version)
        if entry is not None and entry.contributions:
            raise InvalidContributionError(
                f"round {round} holds per-rank contributions; {who} cannot join it (every "
                "task of a job uses --micro-batches, or none)")
        if entry is not None and entry.parts and entry.micro_batches != part.total:
            raise InvalidContributionError(
                f"{who} counts {part.total} micro-batches but round {round} has "
                f"{entry.micro_batches}; every task of a round must use the same M")
        if entry is not None:
            for start, stop in entry.parts:
                if start < part.stop and part.start < stop:
                    raise OverlappingContributionError(
                        f"{who} overlap micro-batches {start}..{stop - 1} already admitted "
                        f"for round {round}; each micro-batch is computed by one task")
        nonfinite = False
        for sums in part.sums:
            merged: dict[str, Any] = {**sums, **part.buffers}
            nonfinite = self._validate(round, rank, merged, samples) or nonfinite
        fresh = entry is None
        entry = self._open.setdefault(round, _Admitted())
        was_nonfinite = entry.nonfinite
        entry.micro_batches = part.total
        entry.parts[part.range] = (None if nonfinite else part, samples)
        entry.nonfinite = entry.nonfinite or nonfinite
        received = len(entry.parts)
        try:
            commands = self._maybe_complete(round)
        except NonFiniteSumError:  # admit nothing: the round stays as it was
            del entry.parts[part.range]
            entry.nonfinite = was_nonfinite
            if fresh:
                del self._open[round]
            raise
        return SubmitOutcome(round, True, False, received, commands)

    def _validate(self, round: int, rank: int, grads: Mapping[str, F32], samples: int) -> bool:
        """Check keys, shapes, dtypes, samples; returns True for an accepted non-finite one."""
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
            raise InvalidContributionError(f"samples={samples!r} must be an int >= 1")
        unknown = sorted(set(grads) - set(self._shapes))
        if unknown:
            raise UnknownLayerError(
                f"rank {rank} sent gradients for layers {unknown} that this shard does not "
                f"hold; send only {sorted(self._shapes)}"
            )
        missing = sorted(set(self._shapes) - set(grads))
        if missing:
            raise GradientShapeError(f"rank {rank}'s contribution lacks layers {missing}")
        for key in sorted(grads):
            grad = grads[key]
            if key in self._buffers:
                self._validate_buffer(rank, key, grad)
                continue
            if not isinstance(grad, np.ndarray) or grad.dtype != np.float32:
                raise GradientShapeError(
                    f"layer {key!r} from rank {rank} must be a float32 numpy array, got "
                    f"{getattr(grad, 'dtype', type(grad).__name__)}"
                )
            if grad.shape != self._shapes[key]:
                raise GradientShapeError(
                    f"layer {key!r} from rank {rank} has shape {grad.shape}, expected "
                    f"{self._shapes[key]}"
                )
        for key in sorted(set(grads) - set(self._buffers)):
            if not _all_finite(grads[key]):
                if self.config.nonfinite == "error":
                    raise NonFiniteGradientError(rank, round, key)
                return True
        return False

    def _validate_buffer(self, rank: int, key: str, value: object) -> None:
        """A buffer value must be an array of the buffer's dtype and shape (finite or not:
        a buffer holds what the forward left, as in torch)."""
        dtype = self._buffers[key]
        if not isinstance(value, np.ndarray) or value.dtype != dtype:
            raise GradientShapeError(
                f"buffer {key!r} from rank {rank} must be a {dtype} numpy array, got "
                f"{getattr(value, 'dtype', type(value).__name__)}")
        if value.shape != self._shapes[key]:
            raise GradientShapeError(f"buffer {key!r} from rank {rank} has shape "
                                     f"{value.shape}, expected {self._shapes[key]}")

    def _maybe_complete(self, round: int) -> tuple[Frame, ...]:
        entry = self._open[round]
        if entry.parts:
            return self._maybe_complete_tree(round, entry)
        needed = self.config.workers
        if entry.deadline_passed:
            needed -= self.config.backup_workers
        if len(entry.contributions) < needed:
            return ()
        command = self._encode(self._build(round, "sync", entry))  # may raise: nothing changed
        del self._open[round]
        self._ready[round] = command
        self._remember(round, frozenset(entry.contributions))
        return self._flush()

    def _maybe_complete_tree(self, round: int, entry: _Admitted) -> tuple[Frame, ...]:
        """A micro-batch round completes once its ranges cover 0..M-1 (they are disjoint)."""
        if sum(stop - start for start, stop in entry.parts) < entry.micro_batches:
            return ()
        command = self._encode(self._build_tree(round, entry))  # may raise: nothing changed
        del self._open[round]
        self._ready[round] = command
        self._done_ranges[round] = frozenset(entry.parts)
        while len(self._done_ranges) > _RECENT_ROUNDS:
            del self._done_ranges[min(self._done_ranges)]
        return self._flush()

    def _build_tree(self, round: int, entry: _Admitted) -> RoundCommand:
        """A micro-batch round's command: per key, the tree over micro-batch index of the
        contributions' node sums (``tree_total``); buffers of micro-batch 0's forward."""
        ranges = sorted(entry.parts)
        samples = sum(entry.parts[r][1] for r in ranges)
        ranks = tuple(range(entry.micro_batches))
        skip = RoundCommand(round=round, kind="sync", samples=int(samples), ranks=ranks,
                            nonfinite_skip=True)
        parts = [entry.parts[r][0] for r in ranges]
        if entry.nonfinite or any(p is None for p in parts):
            return skip
        present = [p for p in parts if p is not None]
        grads: dict[str, F32] = {}
        for key in sorted(set(self._shapes) - set(self._buffers)):
            out = self._sums.get(key)
            if out is None:
                out = self._sums[key] = np.empty(self._shapes[key], np.float32)
            nodes = {node: sums[key] for p in present
                     for node, sums in zip(p.nodes, p.sums, strict=True)}
            with np.errstate(over="ignore", invalid="ignore"):
                grads[key] = tree_total(nodes, entry.micro_batches, out=out)
            if not _all_finite(grads[key]):
                if self.config.nonfinite == "error":
                    raise NonFiniteSumError(round, key)
                return skip
        first = present[0]  # ranges are sorted: the one holding micro-batch 0
        buffers = {k: first.buffers[k] for k in sorted(self._buffers)}
        return RoundCommand(round=round, kind="sync", samples=int(samples), ranks=ranks,
                            grads=grads, buffers=buffers)

    def _build(self, round: int, kind: str, entry: _Admitted) -> RoundCommand:
        """The round's command. Its ``grads`` are the aggregator's reused sum buffers: encode
        it before the next ``_build`` (both callers encode at once).

        The sum itself is checked like each contribution: finite contributions can overflow
        float32 together. Under policy ``error`` that raises NonFiniteSumError (the caller
        then admits nothing); under ``skip-round`` the round becomes a no-op step."""
        ranks = tuple(sorted(entry.contributions))
        samples = sum(entry.contributions[r][1] for r in ranks)
        command_kind: Literal["sync", "async"] = "sync" if kind == "sync" else "async"
        skip = RoundCommand(round=round, kind=command_kind, samples=int(samples), ranks=ranks,
                            nonfinite_skip=True)
        if entry.nonfinite:
            return skip
        grads: dict[str, F32] = {}
        parts = [entry.contributions[r][0] for r in ranks]
        for key in sorted(set(self._shapes) - set(self._buffers)):
            out = self._sums.get(key)
            if out is None:
                out = self._sums[key] = np.empty(self._shapes[key], np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                grads[key] = tree_sum([p[key] for p in parts if p is not None], out=out)
            if not _all_finite(grads[key]):
                if self.config.nonfinite == "error":
                    raise NonFiniteSumError(round, key)
                return skip
        first = next(p for p in parts if p is not None)  # the lowest rank's forward
        return RoundCommand(round=round, kind=command_kind, samples=int(samples), ranks=ranks,
                            grads=grads, buffers={k: first[k] for k in sorted(self._buffers)})

    def _encode(self, command: RoundCommand) -> Frame:
        """``command``'s bytes; then the sum buffers it used are dropped if they are large
        (kept for the next round otherwise): between rounds a large shard would hold a copy
        of its round's sum for nothing, next to the command itself."""
        data = command.encode()
        if sum(a.nbytes for a in self._sums.values()) > REUSE_SUM_BYTES:
            self._sums = {}
        return data

    def _flush(self) -> tuple[Frame, ...]:
        out = []
        while self._next in self._ready:
            out.append(self._ready.pop(self._next))
            self._next += 1
        return tuple(out)

    def _remember(self, round: int, ranks: frozenset[int]) -> None:
        self._done_ranks[round] = ranks
        while len(self._done_ranks) > _RECENT_ROUNDS:
            del self._done_ranks[min(self._done_ranks)]

    def _submit_async(
        self, round: int, rank: int, grads: Mapping[str, F32], samples: int, param_version: int
    ) -> SubmitOutcome:
        """Async: the contribution becomes the next command now (``round`` = the rank's step).

        A step this aggregator admitted already is a duplicate. Steps of one rank may arrive
        in any order (two of its contributions in flight, the earlier one a straggler): each
        is admitted once, and the shard applies each once (``paramserver.async_steps``)."""
        if taken(self._steps, self._early, rank, round):
            return SubmitOutcome(round, False, True, 1)
        bound = self.config.staleness
        if bound and param_version < self._applied - bound:
            raise StaleRoundError(
                f"rank {rank}'s gradient used parameters of version {param_version}, more than "
                f"staleness={bound} behind the applied version {self._applied}; recompute it"
            )
        nonfinite = self._validate(round, rank, grads, samples)
        entry = _Admitted({rank: (None if nonfinite else grads, samples)}, nonfinite)
        command = self._build(round, "async", entry)  # (rank, step) dedups in the shard
        self._steps, self._early = record(self._steps, self._early, rank, round)
        self._next += 1
        return SubmitOutcome(round, True, False, 1, (self._encode(command),))
