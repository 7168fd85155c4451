"""Where a resumed job continues: from the shards' Raft logs when they agree, else from a
checkpoint.

A job killed mid-training (the driver SIGKILLed, its node lost) leaves every shard's
applied rounds in its group's durable Raft log (``durability="disk"``). When the job is
resumed, the groups reload those logs; if every shard applied the same round count ``v``
(a whole number of rounds in ``async``, where a version is one contribution), the job
continues at round ``v``: no round is computed again, and the bits are those of a run
that was never stopped, because rounds are deterministic. If the shards differ (a round
committed on one shard but not yet on another when the driver died), that round's
gradients died with the driver and the other shards' older parameters are gone, so the
job continues from the latest checkpoint instead, which gives the same bits too. So does
a job whose logs are behind its checkpoint, or gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogsVerdict:
    """What the shards' logs allow: ``round`` to continue at, or None and ``why`` not."""

    round: int | None
    why: str


def round_from_logs(versions: Sequence[int], *, versions_per_round: int,
                    checkpoint_round: int | None) -> LogsVerdict:
    """Decide whether a resumed job continues from the shards' logs (module docstring).

    ``versions``: each shard's applied version after its group reloaded its log;
    ``versions_per_round``: 1, or the workers in ``async``; ``checkpoint_round``: the
    latest checkpoint's round, None without one."""
    if not versions:
        return LogsVerdict(None, "there are no shards")
    if len(set(versions)) > 1:
        listed = ", ".join(f"shard {s} at {v}" for s, v in enumerate(versions))
        return LogsVerdict(None, f"the shards' logs end at different versions ({listed})")
    version = versions[0]
    if version % versions_per_round:
        return LogsVerdict(None, f"the shards' logs end mid-round (version {version}, "
                                 f"{versions_per_round} per round)")
    round = version // versions_per_round
    if checkpoint_round is not None and round < checkpoint_round:
        return LogsVerdict(None, f"the shards' logs end at round {round}, before the "
                                 "checkpoint")
    if round == 0 and checkpoint_round is None:
        return LogsVerdict(0, "the shards' logs hold no round yet")
    return LogsVerdict(round, f"every shard applied {round} rounds")
