"""Configuration of a Ray-hosted Raft group (``RaftGroup`` / ``RaftReplica``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from consensus.config import RaftConfig
from consensus.errors import ConfigError
from consensus.incarnation import check_incarnation
from consensus.memory_log import memory_log_root
from consensus.storage import StorageConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class RaftGroupConfig:
    """Settings shared by every replica of one group (and by its client).

    A leader that goes silent (a partition, a hung or powered-off machine) is replaced after
    roughly ``election_ticks * tick_interval_s`` to twice that, plus the pre-vote round:
    with the defaults (20 ms, 10 ticks), well under a second. A leader whose process exits
    or is killed is replaced sooner, whatever the timeout: its followers see its
    connections close and campaign one after the other, a tick or a few after
    (``RaftNode.peer_gone``).
    """

    tick_interval_s: float = 0.02
    """Seconds between two ``RaftNode.tick`` calls (the unit of all Raft timeouts)."""
    election_ticks: int = 10
    """Minimum election timeout, in ticks (see ``RaftConfig.election_ticks``)."""
    heartbeat_ticks: int = 3
    """Leader heartbeat period, in ticks; must be below ``election_ticks``. Each heartbeat is
    one message to each follower and one answer back (over the peer transport), so this
    sets an idle group's CPU cost."""
    pre_vote: bool = True
    """Pre-vote before campaigning, so a rejoining replica cannot disrupt a live leader."""
    check_quorum: bool = True
    """A leader that loses contact with a quorum steps down (and followers are sticky)."""
    snapshot_every: int = 10_000
    """Take a snapshot and compact the log once this many entries applied since the last one."""
    snapshot_log_bytes: int | None = None
    """Also take one once the entries applied since the last snapshot hold this many bytes.
    None: once they hold twice the last snapshot's bytes plus one entry, less the entries a
    pipeline keeps in flight (see ``consensus.compaction``), so the log on disk stays below
    twice the state's size plus one entry, whatever the model size."""
    durability: Literal["disk", "memory"] = "disk"
    """``disk``: every entry is fsynced before a replica acknowledges it (any crash, even
    of the whole machine, loses nothing acknowledged). ``memory``: an entry counts once a
    majority holds it in memory; the log is handed to the OS without fsync (a killed
    process loses nothing) while term, vote and snapshots (every ``snapshot_every`` entries
    or ``snapshot_log_bytes``) are fsynced. A replica whose machine lost power or crashed
    since it wrote comes back like one that lost its disk (``consensus.lost_state``: never
    votes, ``heal`` replaces it), so a minority of such failures loses nothing; if a
    majority lose power, the job resumes from its last checkpoint (``--resume``)."""
    max_msg_bytes: int = 4 << 20
    """Max entry bytes in one AppendEntries."""
    max_inflight_bytes: int = 64 << 20
    """Max unacknowledged entry bytes in flight to one follower."""
    max_inflight_msgs: int = 256
    """Max unacknowledged AppendEntries in flight to one follower."""
    snapshot_chunk_bytes: int = 4 << 20
    """InstallSnapshot chunk size."""
    attempt_timeout_s: float = 2.0
    """Client side: how long one attempt on one replica may take before the client retries
    (same seq) elsewhere; the overall deadline is the ``timeout`` of each call."""
    attempt_bytes_per_s: float = 16e6
    """Client side: an attempt on a proposal of ``n`` bytes may take ``attempt_timeout_s +
    n / attempt_bytes_per_s`` (an 80 MB entry is sent to every follower, fsynced three
    times and applied before it answers)."""
    client_max_inflight_batches: int = 4
    """Client side: at most this many coalesced ``propose`` batches (actor calls) in flight per
    ``RaftGroup`` client; concurrent ``propose`` calls queue behind them and share entries."""
    client_max_batch_bytes: int = 4 << 20
    """Client side: max command bytes coalesced into one entry (a larger command goes alone)."""
    peer_tcp: bool = True
    """Replicas exchange Raft messages over TCP connections (``consensus.transport``),
    falling back to Ray actor calls while no connection is up; False: Ray calls only."""
    peer_max_entry_bytes: int = 1 << 30
    """Most payload bytes (entries, a snapshot chunk) in one TCP frame between replicas; a
    frame may add ``consensus.wire.HEADER_ALLOWANCE`` header bytes. A replica drops a
    connection whose frame announces more, and sends a message that carries more (one entry
    above it) as a Ray actor call instead. At least ``max_msg_bytes`` and
    ``snapshot_chunk_bytes``."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """How each replica lays out its log on disk: payloads above ``inline_max_bytes`` go to
    append-only segment files of ``segment_bytes`` (see ``consensus.storage``). A reopened
    database may use other values; existing rows say where their bytes are."""
    replace_dead_after_s: float | None = 300.0
    """Client side: ``RaftGroup.heal`` replaces a voter that answered no status call for
    longer than this many seconds (Ray could not restart it, e.g. its node is gone), as it
    replaces one that lost its storage; None: only the latter."""
    seed: int | None = None
    """Seed of each replica's election-timeout RNG (``seed * 1000 + node id``); None draws one
    from the OS. Set it for reproducible runs."""
    incarnation: str | None = None
    """The group's incarnation id (``consensus.incarnation.new_incarnation()`` when the group
    is created fresh; the same id when it is re-created over its storage): every replica
    stamps it into its storage and refuses storage of another incarnation
    (``IncarnationMismatchError``). None: storage is not tied to a history (an existing
    stamp is still checked)."""
    inline_apply_bytes: int = 64 << 10
    """Committed entries of at most this many bytes in all (and no snapshot) are applied on
    the replica's event loop; larger ones in its apply thread, so that a long apply (a large
    model's optimizer step) never holds up ticks. A thread hand-off costs more than applying
    a small command, so a small command must apply in well under a tick: a replica whose
    small apply took longer than ``tick_interval_s`` sends every later apply to the thread.
    0 sends every apply to the thread."""
    max_storage_failures: int = 3
    """A replica whose storage fails this many times in a row with the same cause (a full
    disk, an I/O error; a corrupt or foreign database at once) stops restarting: it stays up
    out of service, reporting the cause in ``status()`` (``consensus.storage_failure``)."""

    def __post_init__(self) -> None:
        if not 0.001 <= self.tick_interval_s <= 10.0:
            raise ConfigError(
                f"tick_interval_s must be in [0.001, 10] seconds, got {self.tick_interval_s}"
            )
        if self.snapshot_every < 1:
            raise ConfigError(f"snapshot_every must be >= 1 entry, got {self.snapshot_every}")
        if self.snapshot_log_bytes is not None and self.snapshot_log_bytes < 1:
            raise ConfigError(f"snapshot_log_bytes must be >= 1 byte or None, got "
                              f"{self.snapshot_log_bytes}")
        if self.durability not in ("disk", "memory"):
            raise ConfigError(f"durability must be 'disk' or 'memory', got {self.durability!r}")
        if self.attempt_timeout_s <= 0:
            raise ConfigError(f"attempt_timeout_s must be > 0, got {self.attempt_timeout_s}")
        if not self.attempt_bytes_per_s > 0:
            raise ConfigError(f"attempt_bytes_per_s must be > 0, got {self.attempt_bytes_per_s}")
        if self.client_max_inflight_batches < 1:
            raise ConfigError(f"client_max_inflight_batches must be >= 1, got "
                              f"{self.client_max_inflight_batches}")
        if self.client_max_batch_bytes < 1:
            raise ConfigError(
                f"client_max_batch_bytes must be >= 1, got {self.client_max_batch_bytes}")
        if self.replace_dead_after_s is not None and not self.replace_dead_after_s >= 0:
            raise ConfigError(f"replace_dead_after_s must be >= 0 seconds or None, got "
                              f"{self.replace_dead_after_s}")
        if self.peer_max_entry_bytes < max(self.max_msg_bytes, self.snapshot_chunk_bytes):
            raise ConfigError(
                f"peer_max_entry_bytes ({self.peer_max_entry_bytes}) must be >= max_msg_bytes "
                f"({self.max_msg_bytes}) and snapshot_chunk_bytes ({self.snapshot_chunk_bytes})")
        check_incarnation(self.incarnation, "RaftGroupConfig.incarnation")
        if self.storage.incarnation not in (None, self.incarnation):
            raise ConfigError(f"RaftGroupConfig.storage.incarnation "
                              f"({self.storage.incarnation}) differs from incarnation "
                              f"({self.incarnation}); set only RaftGroupConfig.incarnation")
        if self.inline_apply_bytes < 0:
            raise ConfigError(f"inline_apply_bytes must be >= 0, got {self.inline_apply_bytes}")
        if self.max_storage_failures < 1:
            raise ConfigError(f"max_storage_failures must be >= 1, got "
                              f"{self.max_storage_failures}")
        self.raft_config(1, (1,))  # validates the Raft fields with RaftConfig's own messages

    def storage_config(self) -> StorageConfig:
        """The storage layout with ``durability`` (memory: entries not fsynced, payload
        segments in shared memory where this machine has it: ``consensus.memory_log``) and
        the group's ``incarnation`` applied. Reads the environment: call it where the
        replica runs."""
        memory = self.durability == "memory"
        return dataclasses.replace(
            self.storage, sync_entries=not memory,
            memory_segments=memory_log_root() if memory else None,
            incarnation=self.incarnation or self.storage.incarnation)

    def raft_config(self, node_id: int, voters: tuple[int, ...],
                    lost_state: bool = False) -> RaftConfig:
        """The core's config for replica ``node_id`` (node ids are replica index + 1);
        ``lost_state``: see ``RaftConfig.lost_state``."""
        return RaftConfig(
            id=node_id,
            voters=voters,
            lost_state=lost_state,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_msg_bytes=self.max_msg_bytes,
            max_inflight_bytes=self.max_inflight_bytes,
            max_inflight_msgs=self.max_inflight_msgs,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
        )
