"""The knobs of one simulator run (``SimConfig``) and what it did (``SimResult``).

Every probability is per step; a seed plus a config replays exactly (``consensus.sim``).
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.errors import ConfigError

__all__ = ["SimConfig", "SimResult"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Knobs of one simulated run; every probability is per step."""

    nodes: int = 3
    """Bootstrap group size (all voters, ids ``1..nodes``)."""
    spares: int = 0
    """Hosts outside the group at the start (ids after the voters): fresh joiners (empty
    disk, ``RaftConfig.voters`` the bootstrap voters, as replicas start them) that the
    learner steps (``p_learner``) may add."""
    election_ticks: int = 6
    """RaftConfig.election_ticks of every node."""
    max_msg_bytes: int = 96
    """Small, so batches split and flow control engages."""
    max_inflight_bytes: int = 400
    """Small, so flow control pauses followers."""
    snapshot_chunk_bytes: int = 64
    """Small, so snapshots travel in several chunks."""
    pre_vote: bool = True
    """RaftConfig.pre_vote."""
    check_quorum: bool = True
    """RaftConfig.check_quorum."""
    p_tick: float = 0.25
    """Tick every live node."""
    p_propose: float = 0.2
    """The current leader (if any) proposes a fresh command."""
    p_read: float = 0.03
    """The current leader starts a ReadIndex read."""
    p_drop: float = 0.05
    """A sent message is lost."""
    p_dup: float = 0.03
    """A sent message is delivered twice."""
    max_delay: int = 4
    """A message is delivered 0..max_delay steps after it is sent (reordering)."""
    p_partition: float = 0.01
    """Change the partition (heal, split, one-way link, isolate the leader)."""
    p_crash: float = 0.006
    """Crash a live node (half the time while it persists: a torn write)."""
    p_disk_loss: float = 0.0
    """A (non-torn) crash also wipes the node's disk; it restarts empty under its id with
    ``RaftConfig.lost_state``. At most ``(nodes - 1) // 2`` nodes per run lose their disk, so a
    quorum of nodes that may vote always remains."""
    p_step_in_flight: float = 0.0
    """While a host persists a Ready, due messages to it are stepped in, it may tick, and
    what ``RaftNode.early_messages`` allows is sent before the write is durable (the real
    replica does this while its disk or apply thread works); a torn crash then comes
    after those sends. 0 draws nothing, so older seeds replay unchanged."""
    p_peer_gone: float = 0.0
    """When a node crashes, each live peer hears ``RaftNode.peer_gone`` about it with this
    probability (its connection closed); and with a tenth of it per step, a random live
    node hears it about a random peer that may well be alive (a connection dropped for
    another reason). 0 draws nothing, so older seeds replay unchanged."""
    p_peer_active: float = 0.0
    """Per step, a random live node hears ``RaftNode.peer_active`` about a random live peer
    it is connected to both ways (bytes of a large frame moved between them). 0 draws
    nothing, so older seeds replay unchanged."""
    p_restart: float = 0.05
    """Restart a crashed node from its durable state."""
    p_compact: float = 0.02
    """A node snapshots its state machine and compacts its log."""
    p_transfer: float = 0.004
    """The leader transfers leadership to a random peer."""
    p_conf: float = 0.0
    """The leader proposes removing a voter (never below 3) or re-adding a removed node."""
    p_learner: float = 0.0
    """The leader proposes a learner step: add a non-member (a spare or a removed node) as a
    learner, promote a learner (a caught-up one if any), remove a voter while more than 3
    vote, remove a learner; or (15%) a step already in force, or promoting a non-member,
    which must be refused and change nothing. 0 draws nothing, so older seeds replay
    unchanged."""
    heal_steps: int = 3000
    """Steps allowed after healing for a leader to commit a fresh entry everywhere."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"SimConfig.nodes must be >= 1, got {self.nodes}")
        if self.spares < 0:
            raise ConfigError(f"SimConfig.spares must be >= 0, got {self.spares}")
        if self.max_delay < 0:
            raise ConfigError(f"SimConfig.max_delay must be >= 0, got {self.max_delay}")


@dataclass(slots=True)
class SimResult:
    """What a run did (for assertions and reporting)."""

    seed: int
    steps: int
    acked: int = 0
    max_commit: int = 0
    leaders: int = 0
    max_term: int = 0
    crashes: int = 0
    torn_writes: int = 0
    disk_losses: int = 0
    gone_hints: int = 0
    active_hints: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    reads: int = 0
    messages: int = 0
    early_messages: int = 0
    learner_steps: int = 0
    """Learner-workload membership changes a leader accepted."""
    refused_steps: int = 0
    """Steps already in force (or impossible) that the leader refused, as it must."""
    promotions: int = 0
    """Committed promotions of a learner to voter."""
    replacements: int = 0
    """Committed removals of a voter after a promotion: a server replaced add-first."""
    acked_after_replacement: int = 0
    """Proposals acknowledged after the latest replacement committed."""
