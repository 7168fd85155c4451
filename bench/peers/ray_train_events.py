"""The Ray Train goodput side's event log and what it says: every worker appends JSON
records (start, step, fault, done) to one file, which survives worker and driver restarts;
these pure functions turn it into a ``SideRun`` (``bench.peers.ray_train_goodput``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.goodput_workload import SideRun

SIDE = "ray_train"
Record = dict[str, Any]


def rank_slice(step: int, rank: int, batch_per_worker: int, workers: int) -> tuple[int, int]:
    """The ``[start, stop)`` sample range rank ``rank`` trains on at step ``step``."""
    if not 0 <= rank < workers:
        raise ValueError(f"rank {rank} is outside 0..{workers - 1}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    start = (step * workers + rank) * batch_per_worker
    return start, start + batch_per_worker


def event_line(record: Record) -> bytes:
    """One record as its log line (compact JSON and a newline)."""
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def append_event(path: Path | str, record: Record) -> None:
    """Append ``record`` to the log at ``path`` with one ``write`` (atomic among appenders)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, event_line(record))
    finally:
        os.close(fd)


def parse_events(text: str) -> list[Record]:
    """The records of an event log's text, in order; a last line without its newline (being
    written) is left out."""
    lines = text.split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def read_events(path: Path) -> list[Record]:
    """The records of the event log at ``path`` (empty while it does not exist)."""
    try:
        return parse_events(path.read_text())
    except FileNotFoundError:
        return []


def of_kind(records: Sequence[Record], event: str) -> list[Record]:
    """The records whose ``event`` is ``event``, in order."""
    return [r for r in records if r["event"] == event]


def first_step_time(records: Sequence[Record]) -> float | None:
    """The stamp of the first completed step, ``None`` before there is one."""
    steps = of_kind(records, "step")
    return float(steps[0]["t"]) if steps else None


def cap_deadline(records: Sequence[Record], max_wall_s: float) -> float | None:
    """The ``time.time()`` stamp at which a run capped at ``max_wall_s`` seconds after its
    first completed step stops; ``None`` before the first step."""
    first = first_step_time(records)
    return None if first is None else first + max_wall_s


def completion_time(records: Sequence[Record], steps: int) -> float | None:
    """The stamp at which ``steps`` distinct steps had completed, ``None`` if they never did."""
    seen: set[int] = set()
    for record in of_kind(records, "step"):
        seen.add(int(record["step"]))
        if len(seen) >= steps:
            return float(record["t"])
    return None


def last_fault_time(records: Sequence[Record]) -> float:
    """The stamp of the latest ``fault`` record, ``-inf`` when there is none."""
    faults = of_kind(records, "fault")
    return float(faults[-1]["t"]) if faults else float("-inf")


def kill_candidates(records: Sequence[Record], workers: int, after_t: float) -> list[int] | None:
    """The PIDs (rank order) of the running worker group, or ``None`` while it is recovering.

    The group runs when every rank has a ``start`` record stamped after ``after_t`` (the
    previous fault) and a step has completed after the latest of them.
    """
    latest: dict[int, Record] = {}
    for record in of_kind(records, "start"):
        latest[int(record["rank"])] = record
    if set(latest) != set(range(workers)):
        return None
    if any(float(r["t"]) <= after_t for r in latest.values()):
        return None
    started = max(float(r["t"]) for r in latest.values())
    if not any(float(r["t"]) > started for r in of_kind(records, "step")):
        return None
    return [int(latest[rank]["pid"]) for rank in range(workers)]


def lost_steps(records: Sequence[Record], fault_times: Sequence[float]) -> list[int]:
    """Per fault: steps the group alive at the fault had completed past the step the next
    group resumed from (``start`` records of rank 0 delimit the groups).

    A fault with no later group start (the run ended) counts 0.
    """
    starts = [i for i, r in enumerate(records) if r["event"] == "start" and r["rank"] == 0]
    out = []
    for fault_t in fault_times:
        before = [i for i in starts if float(records[i]["t"]) <= fault_t]
        after = [i for i in starts if float(records[i]["t"]) > fault_t]
        if not before or not after:
            out.append(0)
            continue
        begin, end = before[-1], after[0]
        reached = int(records[begin]["step"])  # steps done when that group started
        for record in records[begin:end]:
            if record["event"] == "step":
                reached = max(reached, int(record["step"]) + 1)
        out.append(max(0, reached - int(records[end]["step"])))
    return out


def without_doomed_steps(records: Sequence[Record]) -> list[Record]:
    """``records`` without the steps a group logged after a fault hit it (before the next
    group's rank 0 started): those are lost with it, and a driver's workers run on for a
    moment after the driver dies."""
    out = []
    doomed = False
    for record in records:
        if record["event"] == "fault":
            doomed = True
        elif record["event"] == "start" and record["rank"] == 0:
            doomed = False
        elif record["event"] == "step" and doomed:
            continue
        out.append(record)
    return out


def side_run(records: Sequence[Record], *, t0: float, steps: int, faulted: bool,
             errors: Sequence[str] = ()) -> SideRun:
    """The ``SideRun`` an event log says; ``t0`` (a ``time.time()`` stamp) is the side's
    start, and every time in the result is relative to it.

    Steps logged by a group after a fault hit it count among that fault's ``lost_steps`` and
    are left out of ``step_times_s`` (``without_doomed_steps``), so the next step after a
    fault is the first one of the group that recovered.
    """
    run = SideRun(side=SIDE, faulted=faulted, errors=list(errors))
    kept = without_doomed_steps(records)
    run.step_times_s = [float(r["t"]) - t0 for r in of_kind(kept, "step")]
    first = first_step_time(kept)
    run.first_step_s = first - t0 if first is not None else float("nan")
    done = completion_time(kept, steps)
    capped = of_kind(records, "capped")
    if done is None:
        run.wall_s = float("nan")
        distinct = len({r["step"] for r in of_kind(kept, "step")})
        if capped:
            run.capped, run.steps_done = True, distinct
            run.notes.append(f"stopped at the wall-time cap with {distinct} of {steps} "
                             f"steps completed")
        else:
            run.errors.append(f"only {distinct} of {steps} steps completed")
    else:
        run.wall_s = done - t0
    faults = of_kind(records, "fault")
    run.fault_times_s = [float(r["t"]) - t0 for r in faults]
    run.fault_kinds = [str(r["kind"]) for r in faults]
    run.lost_steps = lost_steps(records, [float(r["t"]) for r in faults])
    digests = [r["sha256"] for r in of_kind(records, "done")]
    run.model_sha256 = digests[-1] if digests else ""
    return run
