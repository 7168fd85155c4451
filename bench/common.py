"""Shared helpers of the benchmarks: interleaved repeats, medians, tables, JSON results.

Nothing here talks to Ray or starts processes; every helper is a plain function so the peers
and the harnesses stay small (and unit-testable: ``tests/unit/test_bench_common.py``). The
synthetic data set and the MLP defined here are the ones every peer of ``bench.train`` trains
on, so all sides do the same arithmetic per sample.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"

DRIVER_LOG = "driver.log"
PRODUCT_LOGGERS = ("jobs", "paramserver", "consensus", "workers")

IN_FEATURES = 784
HIDDEN = (256, 128)
CLASSES = 10


def log_driver_to(folder: Path) -> Path:
    """Append this process's INFO log records of the product (recoveries, failovers,
    replays) to ``<folder>/driver.log``, to read after a benchmark run; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DRIVER_LOG
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in PRODUCT_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return path


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN for an empty sequence (a side that never ran)."""
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; NaN if empty."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ratio(value: float, reference: float) -> float:
    """``value / reference``, NaN when the reference is missing or zero."""
    if not reference or reference != reference:
        return float("nan")
    return value / reference


def interleave(
    runners: Mapping[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Run every runner once per repeat, in the order given (A B C A B C ...).

    Interleaving spreads slow drifts of a shared machine (thermal, other tenants) over every
    side instead of penalising whichever ran last. Blocks for the whole run. A runner that
    raises is recorded as missing for that repeat and the error is printed, so one broken
    side does not lose the others' numbers.
    """
    results: dict[str, list[float]] = {name: [] for name in runners}
    for rep, name in interleaved_order(list(runners), repeats):
        try:
            value = runners[name]()
        except Exception as exc:  # a peer failing must not hide the other numbers
            print(f"[bench] {name} repeat {rep} failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        results[name].append(value)
        print(f"[bench] repeat {rep} {name}: {value:,.1f}", flush=True)
    return results


def interleaved_order(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """``(repeat, name)`` pairs in run order: every name once per repeat (A B C A B C ...)."""
    return [(rep, name) for rep in range(repeats) for name in names]


def steady_state_rate(records: Sequence[Mapping[str, Any]], skip: int) -> float:
    """Samples per second over the rounds of a metrics.jsonl after the first ``skip``.

    Each record needs ``samples`` and ``samples_per_s`` (samples over that round's wall
    time), so a round's wall time is ``samples / samples_per_s``; the rate is the kept
    rounds' samples over the sum of their wall times. Raises ``ValueError`` when no round is
    left after ``skip`` or a kept round has no positive rate (nothing to measure).
    """
    kept = list(records[skip:])
    if not kept:
        raise ValueError(f"steady_state_rate: {len(records)} rounds, none left after "
                         f"skipping {skip}; run more rounds or skip fewer")
    samples = 0.0
    wall_s = 0.0
    for record in kept:
        rate = float(record["samples_per_s"])
        if not rate > 0:
            raise ValueError(f"steady_state_rate: round {record.get('round')} has "
                             f"samples_per_s={rate}; every kept round must have run")
        samples += float(record["samples"])
        wall_s += float(record["samples"]) / rate
    return samples / wall_s


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "RAY_ADDRESS")


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables that would skew a side measured in a child process.

    Thread caps (``OMP_NUM_THREADS`` & co., which Ray sets to 1 in its workers) would throttle
    the single-process torch side, and ``RAY_ADDRESS`` would attach a side to someone else's
    cluster instead of the fresh local one it starts. Everything else is kept.
    """
    return {k: v for k, v in environ.items() if k not in THREAD_ENV_VARS}


def last_json_object(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (a child's result line).

    Ray and libraries may print before it, so earlier lines are ignored. Raises
    ``ValueError`` if there is none.
    """
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object line in the child's output")


def format_number(value: Any) -> str:
    """Render a table cell: floats with thousands separators, NaN as a dash."""
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` under ``headers``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(format_number(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, stored next to them in every results file."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, data: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``data`` plus a ``_machine`` record as ``<directory>/<name>.json``; return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = dict(data)
    payload["_machine"] = machine_info()
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def synthetic_classification(
    n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 samples of 784 features and int64 labels of 10 classes.

    Labels come from a fixed random linear teacher, so the task is learnable and the loss
    falls; only throughput is measured, but a falling loss shows every side really trains.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN_FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((IN_FEATURES, CLASSES), dtype=np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    return x, y


def build_mlp() -> Any:
    """The benchmark model: 784 → 256 → 128 → 10 with ReLU (a ``torch.nn.Sequential``)."""
    import torch

    layers: list[torch.nn.Module] = []
    width = IN_FEATURES
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, CLASSES))
    return torch.nn.Sequential(*layers)


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, each below 0x80 (7-bit), the command of ``bench.raft``.

    Seven-bit bytes hardly compress (PySyncObj zlib-compresses its traffic) and avoid a
    PySyncObj defect: it pickles with protocol 2, which inflates bytes >= 0x80 by about 1.5x,
    and its chunked transfer of entries larger than ``appendEntriesBatchSizeBytes`` then ends
    early and truncates them (1 MB random commands never commit). Both sides get this payload.
    """
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 128, size=size, dtype=np.uint8)).tobytes()
