"""``consensus.direct_io.SequentialWriter``: the file holds exactly the bytes written,
whether they went past the page cache or fell back to buffered writes."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import direct_io
from consensus.direct_io import ALIGN, SequentialWriter
from tests.unit.refuse_direct_io import refuse_o_direct

_SMALL_STAGE = 2 * ALIGN


def _write(path: Path, chunks: Sequence[bytes | memoryview], *,
           direct: bool = True) -> SequentialWriter:
    writer = SequentialWriter(path, direct=direct)
    for chunk in chunks:
        writer.write(chunk)
    assert writer.finish() == sum(map(len, chunks))
    return writer


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3 * _SMALL_STAGE + 5), max_size=6), st.booleans())
def test_the_file_holds_the_concatenation(sizes: list[int], direct: bool) -> None:
    chunks = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(direct_io, "STAGE_BYTES", _SMALL_STAGE)
        path = Path(tmp) / "f"
        _write(path, chunks, direct=direct)
        assert path.read_bytes() == b"".join(chunks)


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, (8 << 20) + 3])
def test_sizes_around_the_block_and_stage_boundaries(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    _write(path, [memoryview(data)])
    assert path.stat().st_size == size
    assert path.read_bytes() == data


def test_a_filesystem_refusing_o_direct_at_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_o_direct(monkeypatch)
    data = os.urandom(3 * ALIGN + 17)
    writer = _write(tmp_path / "f", [data])
    assert not writer.direct
    assert (tmp_path / "f").read_bytes() == data


@pytest.mark.skipif(not getattr(os, "O_DIRECT", 0), reason="the platform has no O_DIRECT")
@pytest.mark.parametrize("fault", ["einval", "short"])
def test_a_refused_or_short_direct_write_goes_on_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The open accepted O_DIRECT but a write did not (EINVAL), or took an unaligned part
    of a block: the writer carries on buffered from where the file ends, same bytes."""
    monkeypatch.setattr(direct_io, "STAGE_BYTES", _SMALL_STAGE)
    real_pwrite = os.pwrite
    calls = [0]

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls[0] += 1
        if calls[0] == 2:  # the second staged block
            if fault == "einval":
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwrite(fd, memoryview(data)[:100], offset)
        return real_pwrite(fd, data, offset)

    path = tmp_path / "f"
    probe = SequentialWriter(path)
    probe.close()
    if not probe.direct:
        pytest.skip("this filesystem refuses O_DIRECT at open (covered above)")
    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(5 * _SMALL_STAGE + 123)
    writer = _write(path, [data[:7], data[7:]])
    assert not writer.direct
    assert path.read_bytes() == data


def test_errors_other_than_einval_propagate(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    writer = SequentialWriter(tmp_path / "f")
    writer.write(b"x" * 10)
    with pytest.raises(OSError) as info:
        writer.finish()
    assert info.value.errno == errno.ENOSPC
