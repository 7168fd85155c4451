"""On a live group: a caller without the group's secret cannot inject Raft messages, append
entries or change the membership, cannot reach the replica's internals, and reaches only
the service's public methods; the group itself (peers over Ray calls) works as before."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import ray

from consensus import RaftGroup
from consensus.access import GroupSecretError, ServiceMethodError
from consensus.replica_context import ReplicaContext
from consensus.session import Envelope, encode_batch
from consensus.types import AppendEntries, ConfChangeKind
from tests.integration.test_raft_group import FAST, LogMachine

pytestmark = pytest.mark.timeout(180)


class GuardedService:
    """Declares ``length`` public; ``_append`` would write without the client's dedup."""

    service_methods = frozenset({"length"})

    def __init__(self, ctx: ReplicaContext) -> None:
        self.ctx = ctx

    async def length(self) -> int:
        await self.ctx.apply_idle()
        machine = self.ctx.state_machine
        assert isinstance(machine, LogMachine)
        return len(machine.log)

    async def _append(self, command: bytes) -> Any:
        return await self.ctx.propose(command)


def _refused(ref: Any, error: type[Exception]) -> Exception:
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(ref, timeout=30)
    cause = caught.value.cause
    assert isinstance(cause, error), cause
    return cause


def test_without_the_secret_nothing_changes_the_group(ray_session: None, tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, peer_tcp=False)  # every Raft message is a deliver call
    group = RaftGroup.create("it/surface", 3, LogMachine, tmp_path, config=config,
                             service=GuardedService)
    try:
        assert group.propose(b"first") == 1  # peers and client pass the secret
        leader = group.leader()
        before = ray.get(leader.status.remote(), timeout=10)
        node_id = before["node_id"]
        forged = AppendEntries(src=node_id % 3 + 1, dst=node_id, term=before["term"] + 100,
                               prev_log_index=0, prev_log_term=0, entries=(), leader_commit=0)
        wrong = b"\0" * 32
        _refused(leader.deliver.remote(wrong, [forged]), GroupSecretError)
        raw = encode_batch([Envelope("intruder", 1, b"forged")])
        _refused(leader.propose_entry.remote(wrong, raw, 5.0), GroupSecretError)
        _refused(leader.propose.remote(wrong, "intruder", 1, b"forged", 5.0), GroupSecretError)
        _refused(leader.change_member.remote(wrong, int(ConfChangeKind.REMOVE), 2, 5.0),
                 GroupSecretError)
        err = _refused(leader.call_service.remote("_append", b"forged"), ServiceMethodError)
        assert err.allowed == ("length",)
        with pytest.raises(AttributeError):
            leader._on_batch.remote([forged])  # internals are not on the actor
        after = ray.get(leader.status.remote(), timeout=10)
        assert after["term"] < before["term"] + 100  # the forged term was never stepped
        assert after["role"] == "LEADER" and after["voters"] == [0, 1, 2]
        assert after["refused_calls"] == 4
        assert group.read("len") == 1 and group.call_service("length") == 1
        assert group.propose(b"second") == 2  # the group still works
    finally:
        group.shutdown()
