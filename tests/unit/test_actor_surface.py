"""The replica's Ray actor exposes a fixed set of methods; those that change the group need
its secret (consensus.replica_actor, consensus.access). Without Ray: the inner replica is a
recording fake."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

import consensus.replica_actor as replica_actor
from consensus.access import GroupSecretError, SecretGate, check_secret
from consensus.errors import ConfigError
from consensus.replica_actor import ReplicaActor
from consensus.types import AppendEntries

SECRET = bytes(range(32))
READS = {"ping", "status", "read", "snapshot_bytes", "started_empty", "transport_address",
         "call_service"}
GUARDED: dict[str, tuple[Any, ...]] = {
    "deliver": ([AppendEntries(2, 1, 99, 0, 0, (), 0)],),
    "propose_entry": (b"raw entry bytes", 5.0),
    "propose": ("client", 1, b"command", 5.0, 0),
    "change_member": (1, 2, 5.0),
    "transfer_leadership": (2,),
}


class _FakeReplica:
    """Records every call the actor forwards."""

    def __init__(self, group: str, index: int, *args: Any, **kwargs: Any) -> None:
        self.group, self.index = group, index
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return {"role": "LEADER"} if name == "status" else name
        return record


@pytest.fixture
def actor(monkeypatch: pytest.MonkeyPatch) -> ReplicaActor:
    monkeypatch.setattr(replica_actor, "RaftReplica", _FakeReplica)
    return ReplicaActor("job/shard-0", 0, ["a"], "job", object, "/nowhere",
                        object(), peer_token=SECRET)  # type: ignore[arg-type]


def _fake(actor: ReplicaActor) -> _FakeReplica:
    inner = actor.__dict__["_replica"]
    assert isinstance(inner, _FakeReplica)
    return inner


def test_the_actor_class_has_exactly_the_documented_methods() -> None:
    """Ray makes every function of the class callable (``_`` ones too): list them all."""
    methods = {name for name, _ in inspect.getmembers(ReplicaActor, inspect.isfunction)}
    assert methods == READS | set(GUARDED) | {"__init__"}


def test_every_guarded_method_takes_the_secret_first() -> None:
    for name in GUARDED:
        params = list(inspect.signature(getattr(ReplicaActor, name)).parameters)
        assert params[:2] == ["self", "secret"], name


@pytest.mark.parametrize("method", sorted(GUARDED))
@pytest.mark.parametrize("secret", [b"", b"x" * 32, SECRET[:-1] + b"\xff", None,
                                    SECRET.hex()])
def test_a_guarded_call_without_the_secret_is_refused_and_forwards_nothing(
    actor: ReplicaActor, method: str, secret: Any
) -> None:
    with pytest.raises(GroupSecretError, match=f"{method} on replica 0 of job/shard-0"):
        asyncio.run(getattr(actor, method)(secret, *GUARDED[method]))
    assert _fake(actor).calls == []
    status = asyncio.run(actor.status())
    assert status["refused_calls"] == 1


@pytest.mark.parametrize("method", sorted(GUARDED))
def test_a_guarded_call_with_the_secret_is_forwarded(actor: ReplicaActor, method: str) -> None:
    asyncio.run(getattr(actor, method)(SECRET, *GUARDED[method]))
    assert _fake(actor).calls == [(method, GUARDED[method])]


def test_reads_need_no_secret(actor: ReplicaActor) -> None:
    assert asyncio.run(actor.ping()) == "ping"
    assert asyncio.run(actor.status()) == {"role": "LEADER", "refused_calls": 0}


@pytest.mark.parametrize("token", [None, b"short", "a string of 32 characters......."])
def test_an_actor_without_a_usable_secret_does_not_start(
    monkeypatch: pytest.MonkeyPatch, token: Any
) -> None:
    monkeypatch.setattr(replica_actor, "RaftReplica", _FakeReplica)
    with pytest.raises(ConfigError, match="at least 16 random bytes"):
        ReplicaActor("g", 0, ["a"], None, object, "/x", object(),  # type: ignore[arg-type]
                     peer_token=token)


def test_the_gate_logs_the_first_refusal_not_every_one(caplog: pytest.LogCaptureFixture) -> None:
    gate = SecretGate(SECRET, "replica 1 of g")
    for _ in range(5):
        with pytest.raises(GroupSecretError):
            gate.admit(b"wrong", "deliver")
    gate.admit(SECRET, "deliver")
    assert gate.refused == 5
    assert [r.getMessage() for r in caplog.records] == [
        "replica 1 of g refused 1 call(s) without the group's secret (latest: deliver)"]


def test_check_secret_accepts_only_the_same_bytes() -> None:
    check_secret(SECRET, bytes(SECRET), "x")
    for wrong in (bytearray(SECRET), memoryview(SECRET), SECRET + b"\0"):
        with pytest.raises(GroupSecretError):
            check_secret(SECRET, wrong, "x")


def test_the_actor_freezes_what_it_built_out_of_the_cyclic_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's GC thread runs gc.collect() with the GIL held; frozen start-up objects are not
    walked, so a collection no longer stalls the replica's loop."""
    import gc

    monkeypatch.setattr(replica_actor, "RaftReplica", _FakeReplica)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        ReplicaActor("job/shard-0", 0, ["a"], "job", object, "/nowhere",
                     object(), peer_token=SECRET)  # type: ignore[arg-type]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
