"""PySyncObj peer of ``bench.raft``: three SyncObj replicas in three OS processes on localhost.

Each replica runs ``ReplicatedCounter`` (a ``SyncObj`` whose ``@replicated`` ``append`` counts
commands and bytes) in its own process started with the ``spawn`` method. The benchmark drives
the replicas over ``multiprocessing`` pipes: it asks which one leads, then asks the leader to
run a measurement *inside its own process* (proposals are submitted where they are cheapest,
so the peer pays no extra client hop; raftps' numbers include a driver → leader actor call).

SyncObjConf fields set, and why: exactly ``CONF_OVERRIDES`` below; everything else is
PySyncObj's default (checked against pysyncobj 0.3.17). The same dict is written to the results
JSON under ``pysyncobj.conf``.

- ``appendEntriesUseBatch=True``: batching on (the default, kept explicitly), several
  commands per AppendEntries, as raftps batches per ``Ready``.
- ``autoTickPeriod=0.002`` (default 0.05): the tick thread's poll timeout; lowered so a
  replica reacts to traffic within 2 ms instead of 50 ms (the main latency floor).
- ``appendEntriesPeriod=0.05`` (default 0.1): heartbeat interval; lowered so followers learn
  the commit index sooner and a dead leader is noticed sooner.
- ``raftMinTimeout=0.2``, ``raftMaxTimeout=0.4`` (defaults 0.4 / 1.4): election timeout
  range, lowered for a fair failover time (min kept above 3 x ``appendEntriesPeriod``,
  so a few heartbeats fit in every election timeout).
- ``connectionTimeout=1.0`` (default 3.5, kept >= ``raftMaxTimeout``): a dead peer's socket
  is given up sooner.

Not set, so at their defaults: ``appendEntriesBatchSizeBytes`` and the socket
``sendBufferSize`` / ``recvBufferSize`` (2**16 each; larger commands are sent in chunks), and
``journalFile`` (None: the log lives in memory only and nothing is written to disk, while
raftps persists its log before acknowledging, so this side does less durable work per commit).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.common import payload

CONF_OVERRIDES: dict[str, Any] = {
    "appendEntriesUseBatch": True,
    "autoTickPeriod": 0.002,
    "appendEntriesPeriod": 0.05,
    "raftMinTimeout": 0.2,
    "raftMaxTimeout": 0.4,
    "connectionTimeout": 1.0,
}


class PeerError(RuntimeError):
    """The PySyncObj cluster did not answer as expected (no leader, a replica died)."""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _make_node(self_addr: str, partners: list[str], conf: dict[str, Any]) -> Any:
    """Build the replica (imports pysyncobj only in the replica process)."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class ReplicatedCounter(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(self_addr, partners, SyncObjConf(**conf))
            self.commands = 0
            self.total_bytes = 0

        @replicated  # type: ignore[untyped-decorator]
        def append(self, data: bytes) -> int:
            self.commands += 1
            self.total_bytes += len(data)
            return self.commands

    return ReplicatedCounter()


def _latencies(node: Any, size: int, count: int, timeout: float) -> list[float]:
    """One proposal at a time; seconds from submit to applied-on-leader for each."""
    data = payload(size)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        node.append(data, sync=True, timeout=timeout)
        out.append(time.perf_counter() - start)
    return out


def _throughput(node: Any, size: int, count: int, timeout: float) -> float:
    """Submit ``count`` proposals at once (callbacks); seconds until all are applied."""
    data = payload(size)
    done = threading.Event()
    lock = threading.Lock()
    state = {"left": count, "failed": 0}

    def on_result(_result: Any, error: int) -> None:
        with lock:
            state["left"] -= 1
            state["failed"] += int(error != 0)
            if state["left"] == 0:
                done.set()

    start = time.perf_counter()
    for _ in range(count):
        node.append(data, callback=on_result)
    if not done.wait(timeout):
        raise PeerError(f"{state['left']} of {count} proposals unfinished after {timeout}s")
    if state["failed"]:
        raise PeerError(f"{state['failed']} of {count} proposals failed")
    return time.perf_counter() - start


def _commit_until_success(node: Any, deadline_s: float) -> float:
    """Retry one small proposal until it commits; return ``time.monotonic()`` of success."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            node.append(b"x", sync=True, timeout=0.5)
            return time.monotonic()
        except Exception:  # no leader yet / leader changed: retry
            continue
    raise PeerError(f"no commit within {deadline_s}s after the leader was killed")


def _serve(node: Any, conn: Connection) -> None:
    handlers = {
        "leader": lambda: node._isLeader() and node.isReady(),
        "latency": lambda *a: _latencies(node, *a),
        "throughput": lambda *a: _throughput(node, *a),
        "commit": lambda *a: _commit_until_success(node, *a),
    }
    while True:
        request = conn.recv()
        if request[0] == "stop":
            return
        try:
            conn.send(("ok", handlers[request[0]](*request[1:])))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _node_main(self_addr: str, partners: list[str], conf: dict[str, Any], conn: Connection) -> None:
    node = _make_node(self_addr, partners, conf)
    try:
        _serve(node, conn)
    finally:
        node.destroy()


@dataclass
class PySyncObjCluster:
    """Three (``replicas``) SyncObj processes; use as a context manager.

    Not thread-safe: one request at a time per replica. ``stop`` (or leaving the ``with``
    block) terminates every process it started and removes its temporary directory.
    """

    replicas: int = 3
    conf: dict[str, Any] = field(default_factory=lambda: dict(CONF_OVERRIDES))
    _procs: list[Any] = field(default_factory=list)
    _conns: list[Connection] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> PySyncObjCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._tmp = tempfile.TemporaryDirectory(prefix="raftps-pysyncobj-")
        addrs = [f"127.0.0.1:{port}" for port in _free_ports(self.replicas)]
        for addr in addrs:
            conf = dict(self.conf)
            parent, child = ctx.Pipe()
            partners = [a for a in addrs if a != addr]
            proc = ctx.Process(target=_node_main, args=(addr, partners, conf, child), daemon=True)
            proc.start()
            self._procs.append(proc)
            self._conns.append(parent)

    def call(self, replica: int, *request: Any, timeout: float = 120.0) -> Any:
        """Send one request to ``replica`` and wait (at most ``timeout``) for its answer."""
        conn = self._conns[replica]
        conn.send(request)
        if not conn.poll(timeout):
            raise PeerError(f"replica {replica} did not answer {request[0]!r} in {timeout}s")
        status, value = conn.recv()
        if status != "ok":
            raise PeerError(f"replica {replica} failed {request[0]!r}: {value}")
        return value

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self._procs) if p.is_alive()]

    def wait_leader(self, timeout: float = 30.0) -> int:
        """Index of a live replica that is leader and ready; polls every 20 ms."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i in self.alive():
                if self.call(i, "leader", timeout=5.0):
                    return i
            time.sleep(0.02)
        raise PeerError(f"no PySyncObj leader within {timeout}s")

    def kill(self, replica: int) -> float:
        """SIGKILL ``replica``'s process; return ``time.monotonic()`` right after the kill."""
        pid = self._procs[replica].pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self._procs[replica].join(5.0)
        return killed_at

    def stop(self) -> None:
        for i in self.alive():
            with contextlib.suppress(OSError):  # it already died; joined/killed below
                self._conns[i].send(("stop",))
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        self._procs.clear()
        self._conns.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
