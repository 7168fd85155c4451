"""The Makefile passes ``TORCH_SPEC`` to pip word by word (checked with ``make -n``): a spec
with an index URL installs from that index, a version range is not a shell redirection."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def torch_install(tmp_path: Path, *assignments: str) -> list[str]:
    """The argv of the Makefile's torch install line, as the shell would split it."""
    done = subprocess.run(["make", "-n", "-C", str(ROOT), "install",
                           f"VENV={tmp_path / 'venv'}", *assignments],
                          capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in done.stdout.splitlines()
             if "pip install" in line and "torch" in line and "-e" not in line.split()]
    assert len(lines) == 1, done.stdout
    argv = shlex.split(lines[0])
    return argv[argv.index("install") + 1:]


def test_an_index_url_reaches_pip_as_its_own_arguments(tmp_path: Path) -> None:
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    assert torch_install(tmp_path, f"TORCH_SPEC={spec}") == [
        "-q", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu126"]


def test_the_default_pins_the_tested_torch(tmp_path: Path) -> None:
    assert torch_install(tmp_path) == ["-q", "torch==2.13.0"]


def test_the_cpu_wheel_recipe_in_the_makefile_works(tmp_path: Path) -> None:
    assert f'TORCH_SPEC="torch==2.13.0 --index-url {CPU_INDEX}"' in (ROOT / "Makefile").read_text()
    assert torch_install(tmp_path, f"TORCH_SPEC=torch==2.13.0 --index-url {CPU_INDEX}") == [
        "-q", "torch==2.13.0", "--index-url", CPU_INDEX]


def test_a_version_range_stays_one_argument(tmp_path: Path) -> None:
    assert torch_install(tmp_path, "TORCH_SPEC=torch>=2.2,<3") == ["-q", "torch>=2.2,<3"]
