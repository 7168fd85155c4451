"""The README's Python example runs as written (so the documentation stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_training_example_runs(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Training from your own script", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its training example"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.9, out
    assert (tmp_path / "runs/blobs/model.safetensors").exists()

