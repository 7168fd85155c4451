"""The ``--data`` grammar reads the same in ``--help``, the README, docs/DESIGN.md, the
config's docstring and the error for a bad spec."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.train import build_parser
from workers.data import resolve_data
from workers.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
GRAMMAR = "synthetic[:FxC[xTRAIN[xTEST]]]"
WRITTEN = re.compile(r"synthetic\[:[^\s`|]*")


def test_help_readme_and_design_agree() -> None:
    data = next(a for a in build_parser()._actions if "--data" in a.option_strings)
    sources = {
        "--help": str(data.help),
        "README.md": (ROOT / "README.md").read_text(encoding="utf-8"),
        "docs/DESIGN.md": (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8"),
        "jobs/config.py": (ROOT / "jobs" / "config.py").read_text(encoding="utf-8"),
    }
    for name, text in sources.items():
        found = set(WRITTEN.findall(text))
        assert found <= {GRAMMAR}, f"{name} writes {found - {GRAMMAR}}"
    assert WRITTEN.findall(sources["--help"]) == [GRAMMAR]
    assert GRAMMAR in sources["README.md"] and GRAMMAR in sources["docs/DESIGN.md"]


def test_the_grammar_is_what_the_parser_takes() -> None:
    for spec in ("synthetic", "synthetic:6x3", "synthetic:6x3x40", "synthetic:6x3x40x10"):
        resolve_data(spec)
    with pytest.raises(DataError, match=re.escape("FEATURESxCLASSES[xTRAIN[xTEST]]")):
        resolve_data("synthetic:6x3x40x10x2")
