"""Byte encoding of ``ConfChange`` for CONF_CHANGE log entries (thesis §4.1)."""

from __future__ import annotations

import struct

from consensus.errors import ConfigError
from consensus.types import ConfChange, ConfChangeKind

_MAGIC = 0xC1
_FORMAT = struct.Struct(">BBQ")  # magic, kind, node


def encode_conf_change(cc: ConfChange) -> bytes:
    """Encode ``cc`` as 10 bytes; the same bytes on every replica (deterministic)."""
    if cc.node <= 0:
        raise ConfigError(f"ConfChange.node must be a positive id, got {cc.node}")
    return _FORMAT.pack(_MAGIC, int(cc.kind), cc.node)


def decode_conf_change(data: bytes | memoryview) -> ConfChange:
    """Inverse of ``encode_conf_change``; raises ``ConfigError`` on malformed bytes."""
    if len(data) != _FORMAT.size:
        raise ConfigError(f"a ConfChange is {_FORMAT.size} bytes, got {len(data)}")
    magic, kind, node = _FORMAT.unpack(data)
    if magic != _MAGIC or kind not in set(ConfChangeKind):
        raise ConfigError(f"bytes {bytes(data)!r} are not an encoded ConfChange")
    return ConfChange(ConfChangeKind(kind), node)

