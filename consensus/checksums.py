"""The checksum one Raft database's rows and snapshot files carry.

A database is stamped with its checksum when it is created (the ``meta`` row
``checksum``); every row and snapshot file it writes afterwards uses that one. New databases
use CRC-32C (the Castagnoli polynomial, computed with the CPU's CRC32 instruction by the
``crc32c`` package, about 10 GB/s, with the GIL released); databases that hold state but no
stamp were written with zlib's CRC-32 (about 1 GB/s) and keep it. At model scale the
difference is real: every replica checksums every round it stores (tens of MB), and zlib's
CRC of one 40 MB round took 20-95 ms of a replica's CPU on a 2-core machine.

Both functions chain like ``zlib.crc32``: ``crc(b, crc(a, seed)) == crc(a + b, seed)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import crc32c as _crc32c

Checksum = Callable[[Any, int], int]
"""(bytes-like data, seed) -> the checksum of data chained from seed."""

CRC32C = "crc32c"
"""The checksum of every database created now."""
CRC32 = "crc32"
"""The checksum of databases that hold state but no ``checksum`` stamp."""


def crc32c(data: Any, seed: int = 0) -> int:
    """CRC-32C of a bytes-like ``data`` (any contiguous buffer), chained from ``seed``."""
    return int(_crc32c.crc32c(data, seed))


def crc32(data: Any, seed: int = 0) -> int:
    """zlib's CRC-32 of ``data``, chained from ``seed``."""
    return zlib.crc32(data, seed)


_BY_NAME: dict[str, Checksum] = {CRC32C: crc32c, CRC32: crc32}


def checksum(name: str) -> Checksum:
    """The checksum function a stamp names; ValueError for a name this code does not know
    (a database written by a newer version)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown checksum {name!r}; known: {sorted(_BY_NAME)}") from None
