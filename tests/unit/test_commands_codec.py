"""Command frame codec: zero-copy decode, aligned arrays, one-join encode, old frames."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from paramserver import CommandDecodeError, RoundCommand, decode_command
from paramserver.commands import MAGIC, decode_frame, encode_frame, frame_parts


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"a": rng.standard_normal((7, 3)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32),
            "n": np.asarray(12, np.int64), "z": np.zeros((0, 4), np.float32)}


def test_decode_returns_read_only_views_into_the_frame() -> None:
    buffer = bytearray(encode_frame({"k": 1}, _arrays()))
    header, arrays = decode_frame(buffer)
    assert header == {"k": 1}
    for name, value in _arrays().items():
        assert np.array_equal(arrays[name], value) and arrays[name].dtype == value.dtype
        assert not arrays[name].flags.writeable
    assert np.shares_memory(arrays["a"], np.frombuffer(buffer, np.uint8))  # no copy
    with pytest.raises(ValueError, match="read-only"):
        arrays["b"][0] = 1.0


@pytest.mark.parametrize("key_len", range(1, 17))
def test_header_padding_aligns_the_first_array_to_8_bytes(key_len: int) -> None:
    data = encode_frame({"x" * key_len: 1}, {"g": np.arange(6, dtype=np.float32)})
    (size,) = struct.unpack("<I", data[4:8])
    assert (8 + size) % 8 == 0
    _, arrays = decode_frame(data)
    assert arrays["g"].flags.aligned and arrays["g"].tolist() == list(range(6))


def test_encode_is_the_join_of_frame_parts_and_ignores_layout() -> None:
    arrays = _arrays()
    assert encode_frame({"v": 2}, arrays) == b"".join(frame_parts({"v": 2}, arrays))
    strided = {"a": np.asfortranarray(arrays["a"]).astype(">f4"), "b": arrays["b"][::1]}
    plain = {"a": arrays["a"], "b": arrays["b"]}
    assert encode_frame({}, strided) == encode_frame({}, plain)


def test_frames_with_an_unpadded_header_still_decode() -> None:
    grads = {"w": np.arange(3, dtype=np.float32)}
    head = json.dumps({"h": {"type": "round", "round": 4, "kind": "sync", "samples": 2,
                             "ranks": [0, 1], "nonfinite_skip": False},
                       "a": [["w", "f32", [3]]]}, sort_keys=True, separators=(",", ":")).encode()
    old = MAGIC + struct.pack("<I", len(head)) + head + grads["w"].tobytes()
    command = decode_command(old)
    assert isinstance(command, RoundCommand) and command.round == 4
    assert command.grads["w"].tolist() == [0.0, 1.0, 2.0]


def test_truncated_and_trailing_bytes_are_rejected() -> None:
    data = encode_frame({}, {"g": np.ones(4, np.float32)})
    with pytest.raises(CommandDecodeError, match="truncated"):
        decode_frame(data[:-1])
    with pytest.raises(CommandDecodeError, match="trailing"):
        decode_frame(data + b"\0")


def test_a_large_frame_is_gathered_into_its_own_buffer_with_the_same_bytes() -> None:
    """From GATHER_BYTES up, numpy assembles the frame (it copies without the GIL, so a big
    round does not stall the replica's loop the way bytes.join does); same bytes, own memory."""
    from paramserver.commands import GATHER_BYTES

    big = {"w": np.arange(GATHER_BYTES // 4, dtype=np.float32), "n": np.asarray(3, np.int64)}
    small = {"w": np.arange(16, dtype=np.float32)}
    data = encode_frame({"k": 1}, big)
    assert isinstance(data, memoryview)
    assert data == b"".join(frame_parts({"k": 1}, big))
    assert not np.shares_memory(np.frombuffer(data, np.uint8), big["w"])
    header, arrays = decode_frame(data)
    assert header == {"k": 1} and np.array_equal(arrays["w"], big["w"])
    assert isinstance(encode_frame({"k": 1}, small), bytes)
    command = RoundCommand(round=2, kind="sync", samples=4, ranks=(0, 1), grads=big)
    encoded = command.encode()
    assert isinstance(encoded, memoryview)
    decoded = decode_command(encoded)
    assert isinstance(decoded, RoundCommand) and decoded.ranks == (0, 1)
    assert np.array_equal(decoded.grads["w"], big["w"])
