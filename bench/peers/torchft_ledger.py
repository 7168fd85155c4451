"""The step log of the torchft side and what ``bench.peers.torchft_goodput`` computes from it.

Each replica group appends one line per step attempt to its log::

    commit <group> <incarnation> <step> <unix time> <participants>
    abort  <group> <incarnation> <step> <unix time> <participants>

``commit``: the group's manager agreed to commit step ``step`` (its optimizer stepped);
``abort``: the attempt was discarded and the same step index is run again. ``incarnation``
counts the group's process starts (0 first, +1 per restart after a kill).

Definitions used by the side (pure functions here, unit-tested):

* A step is *completed* when the first group commits it (any group, the surviving one while
  its peer is down). ``completion_times`` gives each step index's first commit time; torchft
  never commits a step index twice (a restarted group heals to the healthy group's step and
  continues from there), so there is one completion per step index.
* The *lost steps* of a fault are the completed steps the killed group did not contribute
  to: steps committed after the kill and before the killed group's next incarnation
  commits its first step (or before the run ended). Each of them trained on the surviving
  group's half of its global batch only (the other half of those samples is never used);
  none is computed twice. Aborted attempts of the survivors in that window (the in-flight
  step torchft discards and redoes) are counted separately by ``redone_attempts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KINDS = ("commit", "abort")


@dataclass(frozen=True)
class StepEvent:
    """One line of a group's step log."""

    kind: str
    group: int
    incarnation: int
    step: int
    t: float
    participants: int


@dataclass(frozen=True)
class Kill:
    """A SIGKILL of ``group``'s process ``incarnation`` at unix time ``t``."""

    group: int
    incarnation: int
    t: float


def format_event(kind: str, group: int, incarnation: int, step: int, t: float,
                 participants: int) -> str:
    """One step-log line (without the newline)."""
    if kind not in KINDS:
        raise ValueError(f"step event kind must be one of {KINDS}, got {kind!r}")
    return f"{kind} {group} {incarnation} {step} {t:.6f} {participants}"


def parse_event(line: str) -> StepEvent | None:
    """The event on ``line``; None for a blank or torn line (a process killed mid-write)."""
    parts = line.split()
    if len(parts) != 6 or parts[0] not in KINDS:
        return None
    try:
        return StepEvent(parts[0], int(parts[1]), int(parts[2]), int(parts[3]),
                         float(parts[4]), int(parts[5]))
    except ValueError:
        return None


def parse_log(text: str) -> list[StepEvent]:
    """Every complete event of a step log, in file order; a torn last line is skipped."""
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # no newline yet: the line may still be being written
    return [event for event in map(parse_event, lines) if event is not None]


def completion_times(events: Iterable[StepEvent]) -> dict[int, float]:
    """Each committed step index and the time its first commit happened."""
    first: dict[int, float] = {}
    for event in events:
        if event.kind == "commit" and (event.step not in first or event.t < first[event.step]):
            first[event.step] = event.t
    return first


def rejoin(kill: Kill, events: Iterable[StepEvent]) -> StepEvent | None:
    """The first commit of the killed group's next incarnation (None: it never committed)."""
    commits = [e for e in events if e.kind == "commit" and e.group == kill.group
               and e.incarnation > kill.incarnation and e.t > kill.t]
    return min(commits, key=lambda e: e.t) if commits else None


def lost_steps(kill: Kill, events: Sequence[StepEvent]) -> int:
    """Completed steps the killed group did not contribute to (see the module docstring):
    completed after the kill, with an index below the step the group rejoined at."""
    back = rejoin(kill, events)
    return sum(1 for step, t in completion_times(events).items()
               if t > kill.t and (back is None or step < back.step))


def redone_attempts(kill: Kill, events: Sequence[StepEvent]) -> int:
    """Aborted step attempts of the other groups between the kill and the rejoin."""
    back = rejoin(kill, events)
    return sum(1 for e in events if e.kind == "abort" and e.group != kill.group
               and e.t > kill.t and (back is None or e.t < back.t))


def live_groups(events: Iterable[StepEvent], incarnations: dict[int, int]) -> list[int]:
    """Groups whose current incarnation (``incarnations[group]``) has committed a step."""
    live = {e.group for e in events
            if e.kind == "commit" and incarnations.get(e.group) == e.incarnation}
    return sorted(live)
