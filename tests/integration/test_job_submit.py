"""The README's Ray-job recipe, run as written with Ray's token authentication on.

`export RAY_AUTH_MODE=token`, `ray get-auth-token --generate`, `ray start --head`, `ray job
submit ... -- python -m jobs.train ...`: the job trains, writes its outputs, and its shard
replicas live in the job's Ray namespace. A submission without `RAY_AUTH_MODE=token` is
refused, so the cluster really checks tokens. Every command gets a private HOME, so the
token (`~/.ray/auth_token`) is this test's own.

The head is a separate cluster (`ray start --head --block` in its own process group, every
port chosen free), so the session's embedded Ray (the `ray_session` fixture, not used here)
is never touched. The finalizer kills that process group only: a bare `ray stop` would stop
every Ray on the machine, the embedded one included.
"""

from __future__ import annotations

import json
import os
import re
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


def _env(home: Path) -> dict[str, str]:
    """The README's shell: ``export RAY_AUTH_MODE=token``, with ``home`` as HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    return env


def _readme_recipe() -> list[str]:
    """The commands of the README's "As a Ray job" block, in order."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"\*\*As a Ray job\*\*.*?```bash\n(.*?)```", text, re.S)
    assert block, "README lost its 'As a Ray job' recipe"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


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
def home(tmp_path: Path) -> Path:
    """A HOME holding a fresh token, made as the README says."""
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_env(home),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=60)
    assert (home / ".ray" / "auth_token").is_file()
    return home


@pytest.fixture
def ray_head(tmp_path: Path, home: Path) -> Iterator[str]:
    """A 4-CPU Ray head of its own, token auth on; yields the job-submission address."""
    gcs, dash, agent, agent_grpc, metrics, client, runtime_env = _free_ports(7)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
           "--num-cpus=4", "--disable-usage-stats", "--include-dashboard=true",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--ray-client-server-port={client}", f"--runtime-env-agent-port={runtime_env}"]
    log = (tmp_path / "head.log").open("wb")
    head = subprocess.Popen(cmd, cwd=tmp_path, env=_env(home), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_dashboard(dash, head, timeout=90)
        yield f"http://127.0.0.1:{dash}"
    finally:
        for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 20)):
            if head.poll() is None:
                os.killpg(head.pid, sig)
                try:
                    head.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    continue
        log.close()


def test_the_readme_recipe_sets_token_mode_before_starting_and_submitting() -> None:
    commands = _readme_recipe()
    order = ["export RAY_AUTH_MODE=token", "ray get-auth-token --generate",
             "ray start --head", "ray job submit"]
    at = [next(i for i, c in enumerate(commands) if c.startswith(o)) for o in order]
    assert at == sorted(at), commands


def _submit(address: str, env: dict[str, str], *args: str,
            timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_job_submit_with_token_auth_trains_in_the_jobs_namespace(
    ray_head: str, home: Path, tmp_path: Path
) -> None:
    env = _env(home)
    no_mode = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    refused = _submit(ray_head, no_mode, "--", "python", "-c", "pass", timeout=60)
    assert refused.returncode != 0
    assert "AuthenticationError" in refused.stdout + refused.stderr

    out = tmp_path / "out"
    submission = f"raftps-test-{uuid.uuid4().hex[:8]}"
    done = _submit(ray_head, env, "--submission-id", submission, "--working-dir", str(REPO),
                   "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
                   "--", "python", "-m", "jobs.train", "--epochs", "1", "--replicas", "1",
                   "--shards", "1", "--model", "mlp", "--data", "synthetic:32x4x512x128",
                   "--global-batch", "128", "--job", submission, "--out", str(out),
                   timeout=200)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_head,
                             submission], env=env, capture_output=True, text=True, timeout=30)
    logs = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, logs
    assert "succeeded" in (status.stdout + status.stderr).lower(), logs
    for name in ("model.safetensors", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), f"{name} missing in {sorted(p.name for p in out.iterdir())}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4  # 512 samples / 128 per global batch, one epoch
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0

    replica = f"{submission}/shard-0/replica-0"
    listed = subprocess.run([str(BIN / "ray"), "list", "actors", "--address", ray_head,
                             "--filter", f"name={replica}", "--detail", "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    actors = json.loads(listed.stdout)
    assert [a["ray_namespace"] for a in actors] == [submission], actors
