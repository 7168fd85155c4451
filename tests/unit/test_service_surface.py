"""call_service reaches only the methods a service declares public (consensus.access)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consensus.access import ServiceMethodError, public_methods, service_method
from consensus.errors import NotLeaderError
from consensus.replica_api import ReplicaAPI
from paramserver.config import AggregatorConfig
from paramserver.service import ShardService

REPO = Path(__file__).resolve().parents[2]


class _Ctx:
    """A ShardContext that records proposals (none may happen here)."""

    def __init__(self) -> None:
        self.proposed: list[bytes] = []

    def is_leader(self) -> bool:
        return True

    async def propose(self, command: bytes, timeout: float = 10.0) -> Any:
        self.proposed.append(command)
        return None

    @property
    def state_machine(self) -> Any:
        raise AssertionError("a refused call must not read the state machine")

    async def wait_applied(self, target: Any, timeout: float | None = None) -> None:
        return None

    @property
    def term(self) -> int:
        return 1

    @property
    def leader_changes(self) -> int:
        return 0


class _Role:
    def __init__(self, role: int) -> None:
        self.role, self.leader = role, None


class _Host(ReplicaAPI):
    """The call_service path of a replica, around a given service, without Ray."""

    def __init__(self, service: Any, leader: bool = True) -> None:
        from consensus.types import Role

        self.group, self.index = "job/shard-0", 0
        self._service = service
        self._node = _Role(Role.LEADER if leader else Role.FOLLOWER)  # type: ignore[assignment]


class _Echo:
    service_methods: ClassVar[frozenset[str]] = frozenset({"echo", "_hidden", "missing"})

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def echo(self, value: int) -> int:
        self.calls.append("echo")
        return value

    def _hidden(self) -> None:
        self.calls.append("_hidden")

    def undeclared(self) -> None:
        self.calls.append("undeclared")


def _call(host: _Host, method: Any, *args: Any, leader_only: bool = True) -> Any:
    return asyncio.run(host.call_service(method, *args, leader_only=leader_only))


def test_a_private_helper_of_the_shard_service_is_refused_and_runs_nothing() -> None:
    ctx = _Ctx()
    host = _Host(ShardService(ctx, AggregatorConfig(workers=1)))
    with pytest.raises(ServiceMethodError) as caught:
        _call(host, "_commit", (b"overwrite the shard",))
    assert ctx.proposed == []
    message = str(caught.value)
    assert "'_commit'" in message and "ShardService" in message
    assert "callable: close_round, export, info, pull, step_round, submit, wait_version" in message
    assert caught.value.allowed == tuple(sorted(ShardService.service_methods))


@pytest.mark.parametrize("method", ["undeclared", "_hidden", "missing", "__init__",
                                    "__class__", "", 7, ["echo"]])
def test_only_declared_callable_public_names_are_reachable(method: Any) -> None:
    service = _Echo()
    with pytest.raises(ServiceMethodError, match="callable: echo"):
        _call(_Host(service), method)
    assert service.calls == []


def test_a_declared_method_runs_and_is_awaited() -> None:
    service = _Echo()
    assert _call(_Host(service), "echo", 41) == 41
    assert service.calls == ["echo"]
    assert public_methods(service) == {"echo"}


def test_a_bad_name_is_refused_before_the_leadership_check() -> None:
    """On a follower a bad name is the caller's error, not a NotLeaderError to retry."""
    with pytest.raises(ServiceMethodError):
        _call(_Host(_Echo(), leader=False), "undeclared")
    with pytest.raises(NotLeaderError):
        _call(_Host(_Echo(), leader=False), "echo", 1)


def test_a_service_that_declares_nothing_exposes_nothing() -> None:
    class Silent:
        def ping(self) -> int:
            return 1

    class Wrong:
        service_methods = "ping"  # a string is not a list of names

        def ping(self) -> int:
            return 1

    for service in (Silent(), Wrong()):
        with pytest.raises(ServiceMethodError, match=r"callable: none.*service_methods"):
            service_method(service, "ping", "g")


def test_the_error_survives_pickling_with_its_fields() -> None:
    import pickle

    err = ServiceMethodError("g", "S", "_x", ["b", "a"])
    back = pickle.loads(pickle.dumps(err))
    assert (back.group, back.service, back.method, back.allowed) == ("g", "S", "_x", ("a", "b"))
    assert str(back) == str(err)


def test_the_shard_service_declares_exactly_what_the_parameter_server_calls() -> None:
    source = "".join((REPO / "paramserver" / name).read_text()
                     for name in ("server.py", "server_health.py"))  # the facade's modules
    called = set(re.findall(r'call_service(?:\.options\([^)]*\))?\.remote\(\s*"(\w+)"', source))
    called |= set(re.findall(r'_(?:call_each|await_shards)\(\s*"(\w+)"', source))
    assert called, "the pattern found no call: it no longer matches server.py"
    assert called == ShardService.service_methods
