"""consensus.failures: one verdict per exception class, used by the group client, the
parameter server's failover and the pipelined round loop alike."""

from __future__ import annotations

import pytest
import ray

from consensus.errors import (
    ConfigError,
    NotLeaderError,
    ProposalDroppedError,
    ProposalTimeoutError,
    QuorumUnsafeError,
    StorageCorruptError,
    StorageFullError,
)
from consensus.failures import Failure, classify, is_failover, root_cause
from jobs.pipeline import _recoverable
from paramserver.errors import LockTimeoutError, NonFiniteGradientError
from paramserver.server import is_failover as server_is_failover


def _task_error(cause: BaseException) -> ray.exceptions.RayTaskError:
    """What ray.get raises when a remote call raised ``cause``."""
    return ray.exceptions.RayTaskError(  # type: ignore[no-untyped-call]
        "call_service", "traceback", cause)


CASES: list[tuple[BaseException, Failure]] = [
    (NotLeaderError("replica 2 is not the leader", 1), Failure.RETRY),
    (ProposalDroppedError("leadership changed"), Failure.RETRY),
    (ProposalTimeoutError("no commit in 2 s"), Failure.RETRY),
    (ray.exceptions.GetTimeoutError("no answer"), Failure.RETRY),
    (ray.exceptions.RayActorError(), Failure.RETRY),
    (ray.exceptions.ActorDiedError(), Failure.RETRY),
    (ray.exceptions.ActorUnavailableError("restarting", None), Failure.RETRY),
    (ray.exceptions.ObjectLostError("ab" * 14, None, "call site"), Failure.LOST),
    (ray.exceptions.OwnerDiedError("ab" * 14, None, "call site"), Failure.LOST),
    (ConfigError("snapshot_every must be >= 1"), Failure.FATAL),
    (StorageCorruptError("/data/raft/r.db", "hard state CRC mismatch"), Failure.FATAL),
    (StorageFullError("/data/raft", needed=3 << 30, free=1 << 20), Failure.FATAL),
    (QuorumUnsafeError("refusing to remove replica 0"), Failure.FATAL),
    (NonFiniteGradientError(1, 3, "w"), Failure.FATAL),
    (LockTimeoutError("layer w"), Failure.FATAL),
    (ValueError("bad input"), Failure.FATAL),
]


@pytest.mark.parametrize(("exc", "verdict"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_class_has_one_verdict_bare_or_inside_a_task_error(
        exc: BaseException, verdict: Failure) -> None:
    assert classify(exc) is verdict
    assert classify(_task_error(exc)) is verdict
    assert classify(_task_error(_task_error(exc))) is verdict  # an argument failed
    assert root_cause(_task_error(_task_error(exc))) is exc


@pytest.mark.parametrize("exc", [
    ConfigError("replicas must be >= 1"),
    StorageCorruptError("/data/raft/r.db", "snapshot at index 9 CRC mismatch"),
])
def test_config_and_corrupt_storage_are_never_failed_over(exc: BaseException) -> None:
    """Both used to count as a failover (every ConsensusError did), so the job replayed
    until its timeout hid them; now every caller surfaces them with their message."""
    for check in (is_failover, server_is_failover, _recoverable):
        assert not check(exc)
        assert not check(_task_error(exc))
    assert str(root_cause(_task_error(exc))) == str(exc)  # surfaces with its own message


def test_the_callers_agree_with_the_table() -> None:
    for exc, verdict in CASES:
        assert is_failover(exc) is server_is_failover(exc) is (verdict is Failure.RETRY)
        if not isinstance(exc, TimeoutError):  # see the deadline test below
            assert _recoverable(exc) is (verdict is not Failure.FATAL)


def test_a_round_past_its_own_deadline_stops_the_pipeline() -> None:
    """ray.get(timeout=timeout_s) or wait_version running out is the loop's own deadline,
    not a replica failure: the job stops and says so (no endless replay)."""
    assert not _recoverable(ray.exceptions.GetTimeoutError("round 7 did not finish"))
    assert not _recoverable(TimeoutError("shards did not reach version 8"))
