"""``Segments``' byte count: kept by its own appends and deletions, never by a directory
scan, and always equal to what the files hold on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.segments import Segments

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
