"""The README's dataset examples (a memory-mapped npy directory, a ray.data dataset) run as
written (so the documentation stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Datasets larger than memory", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_both_dataset_examples() -> None:
    found = examples()
    assert len(found) == 2, "the README lost a dataset example"
    assert 'dataset="npy:' in found[0] and "ray.data" in found[1]


@pytest.mark.parametrize(("index", "out"), [(0, "runs/blobs-npy"), (1, "runs/blobs-ray")])
def test_a_readme_dataset_example_runs(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], index: int, out: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(examples()[index], str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", printed).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.9, printed
    assert (tmp_path / out / "model.safetensors").exists()
