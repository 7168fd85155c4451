"""Run a multi-node chaos job (its own ``ray.cluster_utils.Cluster``) in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_cluster_job(module: str, out: Path, timeout_s: float = 540) -> tuple[dict[str, Any], str]:
    """``python -m module out`` outside any connected Ray; its last JSON line and stderr.
    The job must exit 0 and print one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", module, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1]), proc.stderr
