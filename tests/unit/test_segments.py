"""``Segments``' byte count: kept by its own appends and deletions, never by a directory
scan, and always equal to what the files hold on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.direct_io import ALIGN
from consensus.segments import DIRECT_MIN_BYTES, Segments
from tests.unit.refuse_direct_io import refuse_o_direct

pytestmark = pytest.mark.unit


def _on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.seg"))


def test_the_byte_count_follows_appends_rollovers_and_collection(tmp_path: Path) -> None:
    segments = Segments(tmp_path / "seg", segment_bytes=100, sync=False)
    refs = []
    for size in (40, 70, 10, 120, 5, 99):
        refs += segments.append([bytes(size)])
        assert segments.total_bytes() == _on_disk(tmp_path / "seg")
    assert segments.current > 1  # the appends rolled over into new segments
    live = {refs[-1][0]}
    segments.collect(live)
    assert segments.total_bytes() == _on_disk(tmp_path / "seg")
    assert segments.total_bytes() < 40 + 70 + 10 + 120 + 5 + 99
    segments.close()


def test_a_reopened_directory_counts_the_bytes_already_there(tmp_path: Path) -> None:
    first = Segments(tmp_path / "seg", segment_bytes=50, sync=False)
    first.append([bytes(30), bytes(30), bytes(7)])
    first.close()
    again = Segments(tmp_path / "seg", segment_bytes=50, sync=False)
    assert again.total_bytes() == _on_disk(tmp_path / "seg") == 67
    again.append([bytes(3)])
    assert again.total_bytes() == _on_disk(tmp_path / "seg") == 70
    again.close()


MB = 1 << 20


def _payload(size: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(251)) * (size // 251) + bytes(size % 251)


@pytest.mark.parametrize("sync", [True, False])
def test_large_payloads_go_at_aligned_offsets_and_read_back(tmp_path: Path, sync: bool) -> None:
    """A payload of DIRECT_MIN_BYTES or more goes past the page cache, at the next aligned
    offset (with or without fdatasync); small ones stay buffered. Every payload reads back,
    through ``read`` and ``view``, and the count still equals the files' sizes (holes
    included)."""
    segments = Segments(tmp_path / "seg", segment_bytes=64 * MB, sync=sync)
    payloads = [_payload(10, 1), _payload(DIRECT_MIN_BYTES + 5, 2), _payload(3, 3),
                _payload(2 * MB + 1, 4), _payload(DIRECT_MIN_BYTES, 5)]
    refs = segments.append(payloads[:2]) + segments.append(payloads[2:])
    big = [ref for ref, p in zip(refs, payloads, strict=True) if len(p) >= DIRECT_MIN_BYTES]
    assert [off % ALIGN for _seg, off in big] == [0, 0, 0]
    assert refs[0] == (1, 0) and refs[2][1] == refs[1][1] + len(payloads[1])  # no padding
    for (seg, off), data in zip(refs, payloads, strict=True):
        assert segments.read(seg, off, len(data)) == data
        view = segments.view(seg, off, len(data))
        assert view is not None and bytes(view) == data
    assert segments.total_bytes() == _on_disk(tmp_path / "seg")
    assert segments.total_bytes() == refs[-1][1] + len(payloads[-1])
    segments.close()


def test_a_filesystem_refusing_direct_io_gets_buffered_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_o_direct(monkeypatch)
    segments = Segments(tmp_path / "seg", segment_bytes=64 * MB, sync=True)
    data = [_payload(7, 1), _payload(DIRECT_MIN_BYTES + 9, 2), _payload(DIRECT_MIN_BYTES, 3)]
    refs = segments.append(data)
    # the first large payload still starts aligned (decided before the refusal); after
    # the refusal the payloads follow each other
    assert refs[2][1] == refs[1][1] + len(data[1])
    for (seg, off), payload in zip(refs, data, strict=True):
        assert segments.read(seg, off, len(payload)) == payload
    segments.close()
