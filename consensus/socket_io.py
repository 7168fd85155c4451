"""Blocking-socket IO for the peer transport's threads: exact receives into one buffer,
vectored sends without joining, and progress reports while a large frame crosses.

Every message a connection carries after a large frame waits behind it, heartbeats too. So
while a frame of ``PROGRESS_BYTES`` or more crosses, each time another ``PROGRESS_BYTES`` of
it moved, the caller hears ``progress()``: the peer on the other side is alive and reading
(or sending), which ``RaftNode.peer_active`` counts as a heartbeat would be counted.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

from consensus.buffers import empty_buffer

__all__ = ["PROGRESS_BYTES", "advance", "recv_exactly", "send_buffers", "send_some", "shut",
           "views_of"]

IOV_MAX = 512  # buffers per sendmsg call (the OS allows 1024)
PROGRESS_BYTES = 8 << 20
"""While a frame crosses, ``progress()`` is heard each time this many more bytes moved."""


def recv_exactly(sock: socket.socket, size: int,
                 progress: Callable[[], None] | None = None) -> memoryview:
    """``size`` bytes from ``sock`` into one buffer; ConnectionError if it closes first.
    ``progress()`` is called each time another ``PROGRESS_BYTES`` arrived."""
    buf = empty_buffer(size)
    view = buf
    mark = PROGRESS_BYTES
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionError("peer closed the connection")
        view = view[got:]
        if progress is not None and size - len(view) >= mark:
            mark += PROGRESS_BYTES
            progress()
    return buf


def views_of(buffers: Sequence[Any]) -> list[memoryview]:
    return [v for v in (memoryview(b).cast("B") for b in buffers) if v.nbytes]


def advance(views: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of ``views`` once their first ``sent`` bytes went out."""
    i = 0
    while sent:
        n = views[i].nbytes
        if sent >= n:
            sent -= n
            i += 1
        else:
            views[i] = views[i][sent:]
            sent = 0
    return views[i:]


def send_buffers(sock: socket.socket, buffers: Sequence[Any],
                 progress: Callable[[], None] | None = None) -> None:
    """Send ``buffers`` in order with vectored sends, without joining them. ``progress()``
    is called each time the socket took another ``PROGRESS_BYTES``."""
    views = views_of(buffers)
    if progress is None or sum(v.nbytes for v in views) < PROGRESS_BYTES:
        while views:
            views = advance(views, sock.sendmsg(views[:IOV_MAX]))
        return
    moved = 0
    while views:
        # at most PROGRESS_BYTES per call: a blocking send takes a whole frame at once
        sent = sock.sendmsg(_first_bytes(views[:IOV_MAX], PROGRESS_BYTES))
        views = advance(views, sent)
        moved += sent
        if moved >= PROGRESS_BYTES:
            moved -= PROGRESS_BYTES
            progress()


def _first_bytes(views: list[memoryview], limit: int) -> list[memoryview]:
    """The first ``limit`` bytes of ``views`` (views of them, no copy)."""
    out: list[memoryview] = []
    for view in views:
        if limit <= 0:
            break
        out.append(view[:limit])
        limit -= view.nbytes
    return out


def send_some(sock: socket.socket, buffers: Sequence[Any]) -> list[memoryview]:
    """Send what ``buffers`` the socket takes without blocking; the rest, in order."""
    views = views_of(buffers)
    while views:
        try:
            sent = sock.sendmsg(views[:IOV_MAX], [], socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        views = advance(views, sent)
    return views


def shut(sock: socket.socket) -> None:
    """Wake and end whatever thread blocks on ``sock`` (that thread closes it)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
