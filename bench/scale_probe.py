"""The child-side probe of ``bench.scale``: peak disk bytes and RSS per replica during a side.

While a side trains, a thread of the measuring child (``peak_poller``) samples every
``POLL_S`` seconds:

- bytes on disk per replica (``replica_log_bytes``): all of
  ``<out>/raft/<job>_shard-<s>/replica-<i>.db*`` (sqlite file, WAL, ``.segments`` and
  ``.snapshots`` folders: log and snapshot together), sampled once more after training;
- RSS per process (``rss_by_key``): ``psutil`` RSS of the live actors a matcher keys
  (``raft_replica_match``: the ``ReplicaActor`` actors named ``<job>/shard-<s>/replica-<i>``;
  ``ps_match``: the Ray example's ``ParameterServer``; ``ceiling_match``: the no-Raft
  ceiling's shard actors named ``<prefix>/shard-<s>``), pids from the GCS actor table
  (``ray._private.state``; ``ray.util.state.list_actors`` needs the dashboard, which the sides
  do not start). It counts the object-store pages a process touched (shared memory).

- CPU: each keyed actor's user + system seconds (``cpu_seconds_by_key``) and the machine's
  busy seconds (all cores, ``psutil.cpu_times``: everything but idle and iowait), kept at
  their first and last sample; ``cpu_cores`` and ``machine_busy_cores`` are the mean cores
  each used between those samples (start-up included: the actors' first sample comes after
  they started).

Only the peaks are kept (``update_peaks``). Ray and psutil are imported only when actors are
sampled, so the disk part runs (and is unit-tested) without them.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

POLL_S = 0.5
_MACHINE = "<machine>"  # the key of the machine's busy seconds among the CPU samples
_REPLICA_FILE = re.compile(r"^(replica-\d+)\.db")
ActorMatch = Callable[[str, str], str | None]  # (class name, actor name) -> key or None


def _path_bytes(path: Path) -> int:
    """Bytes of a file or of the files below a folder; 0 when something vanished meanwhile
    (a rotated segment: that sample is lost, the peak is kept by the others)."""
    try:
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        return sum(f.stat().st_size for f in files)
    except FileNotFoundError:
        return 0


def replica_log_bytes(raft_dir: Path) -> dict[str, int]:
    """Bytes on disk per replica under a run's ``raft`` folder, keyed ``shard-<s>/replica-<i>``.

    A replica's storage is ``[<incarnation>/]<job>_shard-<s>/replica-<i>.db`` plus its
    ``-wal``/``-shm`` files and ``.segments``/``.snapshots`` folders; files appearing or
    vanishing meanwhile are tolerated.
    """
    found: dict[str, int] = {}
    try:
        groups = [g for g in raft_dir.iterdir() if g.is_dir()]
        # a job keeps its groups in <raft>/<incarnation>/ (jobs.raft_storage)
        groups += [g for top in groups if "_shard-" not in top.name
                   for g in top.iterdir() if g.is_dir()]
    except FileNotFoundError:
        return found
    for group in groups:
        shard = group.name.rpartition("_")[2]
        with contextlib.suppress(FileNotFoundError):
            for entry in group.iterdir():
                match = _REPLICA_FILE.match(entry.name)
                if match:
                    key = f"{shard}/{match.group(1)}"
                    found[key] = found.get(key, 0) + _path_bytes(entry)
    return found


def update_peaks(peaks: dict[str, int], sample: Mapping[str, int]) -> None:
    """Raise each ``peaks[key]`` to ``sample[key]`` where that is higher (adds new keys)."""
    for key, value in sample.items():
        peaks[key] = max(peaks.get(key, value), value)


def raft_replica_match(job: str) -> ActorMatch:
    """Matches the ``ReplicaActor`` actors of ``job``; the key drops the ``<job>/`` prefix."""
    prefix = f"{job}/shard-"

    def match(class_name: str, name: str) -> str | None:
        if class_name == "ReplicaActor" and name.startswith(prefix):
            return name[len(job) + 1:]
        return None

    return match


def ps_match(class_name: str, name: str) -> str | None:
    """Matches the Ray example's ``ParameterServer`` actor (key ``ps``)."""
    return "ps" if class_name == "ParameterServer" else None


CEILING_ACTOR_CLASSES = frozenset({"ShardActor", "AdamShardActor"})


def ceiling_match(prefix: str) -> ActorMatch:
    """Matches ``bench.peers.task_ceiling``'s shard actors named ``<prefix>/shard-<s>``
    (``TaskCeilingConfig.actor_prefix``); the key is ``shard-<s>``."""
    head = f"{prefix}/"

    def match(class_name: str, name: str) -> str | None:
        if class_name in CEILING_ACTOR_CLASSES and name.startswith(head):
            return name[len(head):]
        return None

    return match


@contextlib.contextmanager
def peak_poller(raft_dir: Path | None, match: ActorMatch | None,
                period_s: float = POLL_S) -> Iterator[dict[str, Any]]:
    """Around a measurement: a thread samples ``replica_log_bytes(raft_dir)`` and the RSS of
    the actors ``match`` keys every ``period_s``; yields the dict of peaks it keeps
    (``peak_log_bytes`` only with a ``raft_dir``), the log sampled once more at the end.
    A failed sample is counted in ``poll_errors``, never raised."""
    peaks: dict[str, Any] = {"peak_rss_bytes": {}, "polls": 0, "poll_errors": []}
    if raft_dir is not None:
        peaks["peak_log_bytes"] = {}
    stop = threading.Event()

    first: dict[str, tuple[float, float]] = {}  # key -> (monotonic s, cpu s) of the first
    last: dict[str, tuple[float, float]] = {}  # and of the last sample

    def poll(actors: bool) -> None:
        try:
            if raft_dir is not None:
                update_peaks(peaks["peak_log_bytes"], replica_log_bytes(raft_dir))
            if actors and match is not None:
                pids = actor_pids(match)
                update_peaks(peaks["peak_rss_bytes"], rss_by_key(pids))
                now = time.monotonic()
                # keyed by process too: a restarted replica's new process counts from zero
                cpu = {f"{key}@{pids[key]}": seconds
                       for key, seconds in cpu_seconds_by_key(pids).items()}
                cpu[_MACHINE] = machine_busy_seconds()
                for key, seconds in cpu.items():
                    first.setdefault(key, (now, seconds))
                    last[key] = (now, seconds)
                peaks.update(cpu_rates(first, last))
            peaks["polls"] += 1
        except Exception as exc:  # keep measuring; report what sampling hit
            peaks["poll_errors"] = [*peaks["poll_errors"], f"{type(exc).__name__}: {exc}"][-5:]

    def loop() -> None:
        while not stop.wait(period_s):
            poll(True)

    thread = threading.Thread(target=loop, name="bench-peaks", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        poll(False)  # the log as training left it


def actor_pids(match: ActorMatch) -> dict[str, int]:
    """``{key: pid}`` of the live actors that ``match`` keys, from the GCS actor table."""
    from ray._private import state

    found: dict[str, int] = {}
    for info in state.actors().values():
        key = match(str(info.get("ActorClassName", "")), str(info.get("Name", "")))
        if key is not None and info.get("State") == "ALIVE" and info.get("Pid"):
            found[key] = int(info["Pid"])
    return found


def rss_by_key(pids: Mapping[str, int]) -> dict[str, int]:
    """Resident set size in bytes of each live pid (processes gone meanwhile are skipped)."""
    import psutil

    out: dict[str, int] = {}
    for key, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            out[key] = int(psutil.Process(pid).memory_info().rss)
    return out


def cpu_seconds_by_key(pids: Mapping[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each live pid (processes gone meanwhile are skipped)."""
    import psutil

    out: dict[str, float] = {}
    for key, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = psutil.Process(pid).cpu_times()
            out[key] = float(times.user + times.system)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine spent busy since boot (not idle, not iowait)."""
    import psutil

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


def cpu_rates(first: Mapping[str, tuple[float, float]],
              last: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """``{"cpu_cores": {key: mean cores}, "machine_busy_cores": cores | None}``. Samples are
    keyed ``<key>@<pid>`` (the machine's ``_MACHINE``): a key's CPU seconds are summed over
    its processes (first to last sample of each) and divided by the span from its first
    sample to its last; a key whose samples span no time is left out."""
    used: dict[str, float] = {}
    span: dict[str, tuple[float, float]] = {}
    for sample, (t0, cpu0) in first.items():
        key = sample.rpartition("@")[0] or sample
        t1, cpu1 = last[sample]
        used[key] = used.get(key, 0.0) + cpu1 - cpu0
        lo, hi = span.get(key, (t0, t1))
        span[key] = (min(lo, t0), max(hi, t1))
    cores = {key: used[key] / (hi - lo) for key, (lo, hi) in span.items() if hi > lo}
    return {"cpu_cores": {k: v for k, v in cores.items() if k != _MACHINE},
            "machine_busy_cores": cores.get(_MACHINE)}
