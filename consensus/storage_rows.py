"""How ``consensus.storage`` checks and encodes the fields of its rows.

Every row carries a CRC32 over its fields (a snapshot's image CRC is chained from its
metadata's), and the snapshot row's membership column is text: ``1,2,3`` for the voters,
``1,2,3;4`` with learners (the column predates learners, so older rows still read).
"""

from __future__ import annotations

import struct
import zlib

from consensus.types import Payload


def hard_state_crc(term: int, vote: int, commit: int) -> int:
    return zlib.crc32(struct.pack(">qqq", term, vote, commit))


def entry_crc(idx: int, term: int, kind: int, data: Payload) -> int:
    return zlib.crc32(data, zlib.crc32(struct.pack(">qqq", idx, term, kind)))


def snapshot_header_crc(idx: int, term: int, voters: str) -> int:
    """The CRC of a snapshot's metadata: the seed its image's CRC is chained from."""
    return zlib.crc32(struct.pack(">qq", idx, term) + voters.encode())


def snapshot_crc(idx: int, term: int, voters: str, data: bytes) -> int:
    return zlib.crc32(data, snapshot_header_crc(idx, term, voters))


def voters_text(voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> str:
    """``1,2,3``, or with learners ``1,2,3;4`` (the column predates learners)."""
    text = ",".join(str(v) for v in voters)
    return f"{text};{','.join(str(v) for v in learners)}" if learners else text


def voters_tuple(text: str) -> tuple[int, ...]:
    text = text.split(";")[0]
    return tuple(int(v) for v in text.split(",")) if text else ()


def learners_tuple(text: str) -> tuple[int, ...]:
    _, _, learners = text.partition(";")
    return tuple(int(v) for v in learners.split(",")) if learners else ()
