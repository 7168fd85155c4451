"""``python -m bench.direct_io``: what writing a large file costs, buffered or past the page
cache (``consensus.direct_io.SequentialWriter``), on the filesystem of ``--dir``.

Each trial writes ``--files`` files of ``--mb`` MB in 16 MiB slices, fsyncs and deletes
them, then waits ``--settle`` seconds so that the kernel's writeback and eviction land in
the count; buffered and direct trials alternate. Reported per mode: the medians of the
writing process's CPU (``getrusage``), the whole machine's busy CPU over the trial
(``/proc/stat``: flusher threads included) and the wall time, per file. Writes
``bench/results/direct_io.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median, write_results
from consensus.direct_io import SequentialWriter

SLICE = 16 << 20


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def trial(directory: Path, data: np.ndarray, files: int, direct: bool,
          settle_s: float) -> dict[str, float | None]:
    """One trial: ``files`` files of ``data`` written, fsync'ed and deleted; costs per file."""
    cpu0, busy0, t0 = _process_cpu_s(), _machine_busy_s(), time.perf_counter()
    for i in range(files):
        writer = SequentialWriter(directory / f"f{i}", direct=direct)
        for start in range(0, data.size, SLICE):
            writer.write(data[start:start + SLICE])
        writer.finish(sync=True)
    wall = time.perf_counter() - t0
    for i in range(files):
        (directory / f"f{i}").unlink()
    time.sleep(settle_s)
    busy1 = _machine_busy_s()
    machine = None if busy0 is None or busy1 is None else (busy1 - busy0) / files * 1e3
    return {"process_cpu_ms": (_process_cpu_s() - cpu0) / files * 1e3,
            "machine_cpu_ms": machine, "wall_ms": wall / files * 1e3}


def run(directory: Path, mb: int, files: int, trials: int, settle_s: float) -> dict[str, Any]:
    data = np.random.default_rng(0).integers(0, 255, mb << 20, dtype=np.uint8)
    runs: dict[str, list[dict[str, float | None]]] = {"buffered": [], "direct": []}
    for _ in range(trials):
        for mode in runs:
            runs[mode].append(trial(directory, data, files, mode == "direct", settle_s))
    out: dict[str, Any] = {}
    for mode, rows in runs.items():
        out[mode] = {key: median([v for r in rows if (v := r[key]) is not None])
                     for key in ("process_cpu_ms", "machine_cpu_ms", "wall_ms")}
        out[mode]["trials"] = rows
    probe = SequentialWriter(directory / "probe")
    out["direct_available"] = probe.direct
    probe.close()
    (directory / "probe").unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory on the filesystem to measure (default: a temp dir)")
    parser.add_argument("--mb", type=int, default=120, help="MB per file (default 120)")
    parser.add_argument("--files", type=int, default=3, help="files per trial (default 3)")
    parser.add_argument("--trials", type=int, default=6, help="trials per mode (default 6)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds after each trial (default 1.0)")
    args = parser.parse_args(argv)
    if min(args.mb, args.files, args.trials) < 1 or args.settle < 0:
        parser.error("--mb, --files and --trials must be at least 1, --settle at least 0")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = run(Path(tmp), args.mb, args.files, args.trials, args.settle)
    results["_settings"] = {"mb": args.mb, "files": args.files, "trials": args.trials,
                            "settle_s": args.settle}
    path = write_results("direct_io", results)
    for mode in ("buffered", "direct"):
        r = results[mode]
        print(f"{mode:8s} per {args.mb} MB file: process CPU {r['process_cpu_ms']:.0f} ms, "
              f"machine CPU {r['machine_cpu_ms']:.0f} ms, wall {r['wall_ms']:.0f} ms")
    print(f"direct IO available: {results['direct_available']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
