"""Large buffers assembled without holding the GIL.

A round of a large model is tens of MB and a shard's snapshot hundreds: joining such
buffers with ``bytes.join`` or reading them through ``io.BytesIO`` copies them while the
GIL is held, and the replica's event loop (ticks, heartbeats) stops for as long. numpy's
copies of plain bytes release the GIL, so these helpers gather into, and read from, numpy
buffers instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ViewReader", "empty_buffer", "gather", "same_bytes"]

_COMPARE_CHUNK = 16 << 20


def empty_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, not zero-filled (fill it completely)."""
    return np.empty(size, np.uint8).data


def gather(parts: Sequence[Any]) -> memoryview:
    """The concatenation of ``parts`` (bytes-like objects) in one new buffer; each part is
    copied once, by numpy, with the GIL released."""
    views = [np.frombuffer(part, np.uint8) for part in parts]
    out = np.empty(sum(v.size for v in views), np.uint8)
    pos = 0
    for view in views:
        out[pos:pos + view.size] = view
        pos += view.size
    return out.data


def same_bytes(a: Any, b: Any) -> bool:
    """Whether two bytes-like objects hold the same bytes, compared by numpy in slices
    with the GIL released (``==`` between a memoryview and bytes walks them item by item
    with the GIL held); the same memory is equal at once."""
    left = np.frombuffer(memoryview(a).cast("B"), np.uint8)
    right = np.frombuffer(memoryview(b).cast("B"), np.uint8)
    if left.size != right.size:
        return False
    if left.size == 0 or left.ctypes.data == right.ctypes.data:
        return True
    return all(np.array_equal(left[i:i + _COMPARE_CHUNK], right[i:i + _COMPARE_CHUNK])
               for i in range(0, left.size, _COMPARE_CHUNK))


class ViewReader:
    """A read-only file over a buffer, for ``pickle.Unpickler``: unlike ``io.BytesIO`` it
    does not copy the buffer first (the unpickler copies each object's bytes once)."""

    def __init__(self, data: Any) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        chunk = bytes(self._view[self._pos:end])
        self._pos = end
        return chunk

    def readinto(self, buf: Any) -> int:
        target = memoryview(buf).cast("B")
        end = min(len(self._view), self._pos + len(target))
        n = end - self._pos
        np.frombuffer(target, np.uint8)[:n] = np.frombuffer(self._view[self._pos:end], np.uint8)
        self._pos = end
        return n

    def readline(self, size: int = -1) -> bytes:
        rest = self._view[self._pos:] if size < 0 else self._view[self._pos:self._pos + size]
        raw = bytes(rest[:256])  # pickle's text opcodes (old protocols) are short lines
        cut = raw.find(b"\n")
        line = raw if cut < 0 else raw[:cut + 1]
        self._pos += len(line)
        return line
