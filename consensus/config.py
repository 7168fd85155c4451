"""Configuration of one Raft replica (``RaftNode``)."""

from __future__ import annotations

from dataclasses import dataclass

from consensus.errors import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class RaftConfig:
    """Static settings of one replica; every replica of a group should use the same values.

    Time is counted in ticks (the host calls ``RaftNode.tick`` at a fixed period).
    """

    id: int
    """This replica's id: a positive int, unique within the group."""
    voters: tuple[int, ...]
    """The initial voters, used when neither a snapshot nor the log names a membership.
    A replica joining an existing group should pass the group's current voters (without
    itself): it replays later changes from the log and never campaigns while not a
    voter. A joiner given ``()`` cannot know the bootstrap membership, so it never
    campaigns until a snapshot from the leader tells it the membership (it still
    replicates, and the leader counts it as a voter once added)."""
    election_ticks: int = 10
    """Minimum election timeout in ticks; each timeout is drawn from
    ``[election_ticks, 2*election_ticks)`` with the injected RNG. Also the check-quorum
    period and the leader-stickiness window. Must exceed ``heartbeat_ticks``."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats (and retries stalled probes and snapshot chunks) this often."""
    pre_vote: bool = True
    """Run a pre-vote round (thesis §9.6) before incrementing the term."""
    check_quorum: bool = True
    """A leader that heard from no quorum within ``election_ticks`` steps down (thesis §6.2);
    followers also ignore vote requests while they have a live leader (stickiness)."""
    max_msg_bytes: int = 4 << 20
    """Max payload bytes of entries in one AppendEntries (at least one entry is always sent)."""
    max_inflight_bytes: int = 64 << 20
    """Flow control: max unacknowledged entry bytes in flight to one follower."""
    max_inflight_msgs: int = 256
    """Flow control: max unacknowledged AppendEntries in flight to one follower."""
    snapshot_chunk_bytes: int = 4 << 20
    """InstallSnapshot chunk size in bytes."""
    stall_beat_bytes: int = 4 << 20
    """A follower that acknowledged nothing of what is in flight for ``3 + inflight bytes /
    stall_beat_bytes`` heartbeats is probed again (its appends were presumably lost): a
    large entry gets time to be sent, written and acknowledged before it is resent."""
    max_apply_bytes: int = 64 << 20
    """Max payload bytes of committed entries in one Ready (at least one entry); the rest
    follows in later Readies, so a restart or catch-up does not apply the whole log at once."""
    lost_state: bool = False
    """This replica restarted WITHOUT its durable state (e.g. on a new node after its disk
    was lost) but under its old id. It may have voted, or acknowledged entries, in terms it no
    longer remembers, so it never grants a vote (nor a pre-vote) and never campaigns: its
    empty log would otherwise let a candidate that lacks committed entries win (§5.4.1
    assumes voters keep what they acknowledged). It still replicates, and its new acks are
    durable. Replace it with a fresh member (thesis §4: a server that loses its disk rejoins
    as a new server); until then the group tolerates one failure fewer."""

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ConfigError(f"RaftConfig.id must be a positive int, got {self.id}")
        if any(v <= 0 for v in self.voters) or len(set(self.voters)) != len(self.voters):
            raise ConfigError(
                f"RaftConfig.voters must be distinct positive ids, got {self.voters}"
            )
        if self.heartbeat_ticks < 1:
            raise ConfigError(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must be greater than "
                f"heartbeat_ticks ({self.heartbeat_ticks}); raise election_ticks"
            )
        for name in ("max_msg_bytes", "max_inflight_bytes", "max_inflight_msgs",
                     "snapshot_chunk_bytes", "max_apply_bytes", "stall_beat_bytes"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"RaftConfig.{name} must be >= 1, got {value}")
        if self.max_inflight_bytes < self.max_msg_bytes:
            raise ConfigError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be >= max_msg_bytes "
                f"({self.max_msg_bytes}); raise max_inflight_bytes"
            )
