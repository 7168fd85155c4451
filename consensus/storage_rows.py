"""How ``consensus.storage`` checks and encodes the fields of its rows.

Every row carries a checksum over its fields (a snapshot's image checksum is chained from
its metadata's), computed with the database's own function (``consensus.checksums``), and
the snapshot row's membership column is text: ``1,2,3`` for the voters, ``1,2,3;4`` with
learners (the column predates learners, so older rows still read).
"""

from __future__ import annotations

import struct

from consensus.checksums import Checksum
from consensus.types import Payload


def hard_state_crc(term: int, vote: int, commit: int, *, checksum: Checksum) -> int:
    return checksum(struct.pack(">qqq", term, vote, commit), 0)


def entry_crc(idx: int, term: int, kind: int, data: Payload, *, checksum: Checksum) -> int:
    return checksum(data, checksum(struct.pack(">qqq", idx, term, kind), 0))


def snapshot_header_crc(idx: int, term: int, voters: str, *, checksum: Checksum) -> int:
    """The checksum of a snapshot's metadata: the seed its image's is chained from."""
    return checksum(struct.pack(">qq", idx, term) + voters.encode(), 0)


def snapshot_crc(idx: int, term: int, voters: str, data: bytes, *, checksum: Checksum) -> int:
    return checksum(data, snapshot_header_crc(idx, term, voters, checksum=checksum))


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
