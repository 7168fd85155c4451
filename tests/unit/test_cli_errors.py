"""User mistakes end in one line on stderr, not a traceback, before Ray starts.

The CLI runs in a subprocess with a user module (factories and loaders) written into the
test's folder, as a new user would write one. ``--debug`` / ``RAFTPS_DEBUG=1`` bring the
traceback back. Server errors reaching ``main`` are checked in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus.errors import StorageFullError
from jobs.train import main
from paramserver.errors import NonFiniteGradientError

ROOT = Path(__file__).resolve().parents[2]
USER_MODULE = '''
import numpy as np
import torch


def three_classes():
    return torch.nn.Linear(10, 3)


def eleven_inputs():
    return torch.nn.Linear(11, 3)


def unmounted_factory():
    raise RuntimeError("disk not mounted")


def labels_to_7():
    x = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    y = np.arange(32) % 8
    return x, y, x[:8], y[:8]


def labels_to_2():
    x, y, xt, yt = labels_to_7()
    return x, y % 3, xt, yt % 3


def unmounted_loader():
    raise RuntimeError("disk not mounted")
'''


def run_cli(tmp_path: Path, *flags: str, debug_env: bool = False
            ) -> subprocess.CompletedProcess[str]:
    """``python -m jobs.train`` with ``usermod`` importable and outputs under tmp_path."""
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    env = {k: v for k, v in os.environ.items() if k not in ("RAFTPS_DEBUG", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    if debug_env:
        env["RAFTPS_DEBUG"] = "1"
    argv = [sys.executable, "-m", "jobs.train", "--out", str(tmp_path / "out"),
            "--workers", "1", "--shards", "1", "--replicas", "1", "--global-batch", "8",
            "--epochs", "1", *flags]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.mark.parametrize(
    ("model", "data", "code", "expected"),
    [
        # a label outside the model's outputs (would be IndexError: Target 7 is out of bounds)
        ("usermod:three_classes", "usermod:labels_to_7", 2,
         ["--model usermod:three_classes outputs 3 classes", "--data usermod:labels_to_7",
          "labels up to 7", "give the model's last layer 8 outputs"]),
        # an input width that does not match the data (would be mat1 and mat2 shapes ...)
        ("usermod:eleven_inputs", "usermod:labels_to_2", 2,
         ["--model usermod:eleven_inputs fails on one sample of --data usermod:labels_to_2",
          "mat1 and mat2 shapes cannot be multiplied", "nn.Linear(10, ...)"]),
        # a loader or a factory that raises
        ("usermod:three_classes", "usermod:unmounted_loader", 1,
         ["DataError: --data usermod:unmounted_loader raised RuntimeError: disk not mounted",
          "fix the loader"]),
        ("usermod:unmounted_factory", "usermod:labels_to_2", 1,
         ["ModelFactoryError: --model usermod:unmounted_factory raised RuntimeError: "
          "disk not mounted", "fix the factory"]),
    ],
    ids=["label-out-of-range", "input-width", "loader-raises", "factory-raises"],
)
def test_a_user_mistake_is_one_line_before_ray_starts(
    tmp_path: Path, model: str, data: str, code: int, expected: list[str]
) -> None:
    done = run_cli(tmp_path, "--model", model, "--data", data)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # Ray logs its start on stderr: it never started
    assert lines[0].startswith("python -m jobs.train: error: ")
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "out").exists()  # bad input changes nothing


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    flags = ["--debug"] if how == "flag" else []
    done = run_cli(tmp_path, "--model", "usermod:three_classes", "--data",
                   "usermod:unmounted_loader", *flags, debug_env=how == "env")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert 'raise RuntimeError("disk not mounted")' in done.stderr  # the user's own frame
    assert "DataError: --data usermod:unmounted_loader raised" in done.stderr


def _ray_wrapped(error: Exception) -> Exception:
    """``error`` as a Ray actor call delivers it: a RayTaskError that is also an ``error``."""
    from ray.exceptions import RayTaskError

    remote = "Traceback (most recent call last):\n  File \"replica.py\", line 1\n"
    task_error = RayTaskError("RaftReplica.propose", remote, error)  # type: ignore[no-untyped-call]
    wrapped: Exception = task_error.as_instanceof_cause()  # type: ignore[no-untyped-call]
    return wrapped


@pytest.mark.parametrize(
    ("make", "name", "text"),
    [
        (lambda: StorageFullError("/data/raft", 4096, 10), "StorageFullError",
         "Raft storage /data/raft is out of disk space: needs 4096 bytes"),
        (lambda: NonFiniteGradientError(1, 3, "fc.weight"), "NonFiniteGradientError",
         "rank 1 sent a non-finite gradient (NaN/Inf) for layer 'fc.weight' in round 3"),
        (lambda: _ray_wrapped(NonFiniteGradientError(0, 5, "w")), "NonFiniteGradientError",
         "rank 0 sent a non-finite gradient"),
    ],
    ids=["consensus", "paramserver", "paramserver-through-ray"],
)
def test_server_errors_reaching_the_cli_are_one_line_naming_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    make: Callable[[], Exception], name: str, text: str,
) -> None:
    def failing_train(*args: object, **kwargs: object) -> object:
        raise make()

    monkeypatch.delenv("RAFTPS_DEBUG", raising=False)
    monkeypatch.setattr("jobs.api.train", failing_train)
    assert main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"python -m jobs.train: error: {name}: {text}")
    assert "Traceback" not in err and "RayTaskError" not in err
