"""``PeerRouter``'s send path when a peer's connection failed: it looks the peer up again.

A replica that restarted listens on a new port. Its messages keep arriving (by Ray calls
meanwhile), so it never looks stale, and without this the router would dial the old port
for ever and send everything by Ray calls, with no connection to watch for its death."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consensus.peers import _RELOOK_S, PeerRouter
from consensus.types import TimeoutNow


class _FailedTransport:
    """A transport whose connection to every peer failed: sends go to the fallback."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.forgotten: list[int] = []

    def failed(self, node_id: int) -> bool:
        return True

    def send(self, node_id: int, address: Any, batch: list[Any]) -> bool:
        self.sent.append((node_id, address))
        return False

    def forget(self, node_id: int) -> None:
        self.forgotten.append(node_id)


class _Handle:
    def __init__(self) -> None:
        self.delivered: list[Any] = []
        self.deliver = self

    def remote(self, secret: bytes, batch: list[Any]) -> None:
        self.delivered.append(batch)


def test_a_peer_heard_from_whose_connection_failed_is_looked_up_again_throttled() -> None:
    async def scenario() -> tuple[list[int], _FailedTransport, _Handle, PeerRouter]:
        transport = _FailedTransport()
        router = PeerRouter(lambda n: f"replica-{n}", None, transport,  # type: ignore[arg-type]
                            b"secret")
        handle = _Handle()
        looked: list[int] = []
        addresses = iter([("10.0.0.1", 1000), ("10.0.0.1", 2000)])

        def lookup(node_id: int) -> tuple[Any, tuple[str, int]]:
            looked.append(node_id)
            return handle, next(addresses)

        router._lookup = lookup  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()

        async def send_and_settle() -> None:
            router.heard(3, time.monotonic())  # its messages arrive: it never looks stale
            router.send([TimeoutNow(1, 3, 1)])
            await loop.run_in_executor(router._lookups, lambda: None)  # lookups done
            await asyncio.sleep(0)  # their callbacks ran

        await send_and_settle()  # no handle yet: the first lookup (port 1000)
        await send_and_settle()  # failed, but within _RELOOK_S of that lookup: none
        assert looked == [3]
        router._since[3] -= 2 * _RELOOK_S
        await send_and_settle()  # failed again, later: looked up again (port 2000)
        return looked, transport, handle, router

    looked, transport, handle, router = asyncio.run(scenario())
    assert looked == [3, 3]
    assert router._addresses[3] == ("10.0.0.1", 2000)
    assert 3 in transport.forgotten  # the new address replaces the old connection
    assert len(handle.delivered) == 2  # meanwhile by the fallback (once the handle was known)
