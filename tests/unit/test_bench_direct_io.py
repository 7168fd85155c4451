"""``bench.direct_io``'s harness with a tiny file: both modes measured, files cleaned up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import direct_io


def test_both_modes_are_measured_and_nothing_is_left_behind(tmp_path: Path) -> None:
    out = direct_io.run(tmp_path, mb=1, files=2, trials=2, settle_s=0.0)
    for mode in ("buffered", "direct"):
        assert len(out[mode]["trials"]) == 2
        assert out[mode]["wall_ms"] > 0 and out[mode]["process_cpu_ms"] >= 0
    assert isinstance(out["direct_available"], bool)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        direct_io.main(["--mb", "0"])
    assert info.value.code == 2
    assert "--mb" in capsys.readouterr().err
