"""`ray job submit` runs `python -m jobs.train` on a standalone Ray head and writes its outputs.

The head is a separate cluster (`ray start --head --block` in its own process group, every
port chosen free), so the session's embedded Ray (the `ray_session` fixture, not used here)
is never touched. The finalizer kills that process group only: a bare `ray stop` would stop
every Ray on the machine, the embedded one included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", ".whl", "runs", ".mypy_cache", ".ruff_cache", ".pytest_cache",
            "bench/results", "**/__pycache__", "*.egg-info"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"  # a private, local, short-lived cluster
    return env


def _wait_dashboard(port: int, head: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited early with code {head.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"dashboard on port {port} not up after {timeout}s")


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A 4-CPU Ray head of its own; yields the job-submission address."""
    gcs, dash, agent, agent_grpc, metrics, client, runtime_env = _free_ports(7)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
           "--num-cpus=4", "--disable-usage-stats", "--include-dashboard=true",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--ray-client-server-port={client}", f"--runtime-env-agent-port={runtime_env}"]
    log = (tmp_path / "head.log").open("wb")
    head = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_dashboard(dash, head, timeout=90)
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if head.poll() is None:
                os.killpg(head.pid, sig)
                try:
                    head.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    continue
        log.close()


def test_job_submit_trains_and_writes_outputs(ray_head: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    submission = f"raftps-test-{uuid.uuid4().hex[:8]}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head,
           "--submission-id", submission, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
           "--", "python", "-m", "jobs.train", "--epochs", "1", "--replicas", "1",
           "--shards", "1", "--model", "mlp", "--data", "synthetic:32x4x512x128",
           "--global-batch", "128", "--job", submission, "--out", str(out)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=200)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_head,
                             submission], env=_env(), capture_output=True, text=True, timeout=30)
    logs = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, logs
    assert "succeeded" in (status.stdout + status.stderr).lower(), logs
    for name in ("model.safetensors", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), f"{name} missing in {sorted(p.name for p in out.iterdir())}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4  # 512 samples / 128 per global batch, one epoch
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
