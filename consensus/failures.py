"""Failure classification: the one rule for what an exception from a replica call means.

Every retry loop (``RaftGroup``'s client, ``ParameterServer``'s failover, the pipelined
round loop) asks :func:`classify` and acts on the answer:

=================  ==========================================================  ============
exception          meaning                                                      verdict
=================  ==========================================================  ============
NotLeaderError,    the call did not run (or its answer was lost) because of    ``RETRY``
ProposalDropped,   leadership or a replica's life: send the same request
ProposalTimeout,   again, to the (re-discovered) leader; a retry is safe
GetTimeoutError,   (sessions deduplicate commands, membership steps already
RayActorError      done succeed)
ObjectLostError    a value was lost with a node (Ray cannot rebuild an          ``LOST``
                   actor's answer): recompute the work that needed it
anything else      ConfigError, StorageCorruptError, StorageFullError,         ``FATAL``
                   QuorumUnsafeError, a state machine's or service's own
                   error: no other replica or retry would do better; it
                   surfaces at once with its message
=================  ==========================================================  ============

The verdict is taken on the root cause: the innermost error of a chain of Ray task
errors (a task that failed because an argument of it failed carries that failure inside).
A caller's own deadline is not a replica failure: a loop whose time is up stops with a
timeout whatever the last verdict was.
"""

from __future__ import annotations

import enum

import ray

from consensus.errors import NotLeaderError, ProposalDroppedError, ProposalTimeoutError

__all__ = ["Failure", "classify", "is_failover", "root_cause"]


class Failure(enum.Enum):
    RETRY = "retry"  # resend the same request, to the leader found again
    LOST = "lost"  # a result died with a node: recompute what needed it
    FATAL = "fatal"  # surface now, with its message


_RULES: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    ((NotLeaderError, ProposalDroppedError, ProposalTimeoutError), Failure.RETRY),
    ((ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError), Failure.RETRY),
    ((ray.exceptions.ObjectLostError,), Failure.LOST),
)
"""Checked in order; the first match wins; no match is FATAL. ``ActorUnavailableError``
and ``ActorDiedError`` are ``RayActorError`` subclasses."""


def _cause(exc: BaseException) -> BaseException:
    """The application exception inside a Ray task error, else ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain of RayTaskErrors (at most 16 deep)."""
    for _ in range(16):
        inner = _cause(exc)
        if inner is exc:
            return exc
        exc = inner
    return exc


def classify(exc: BaseException) -> Failure:
    """The verdict on ``exc`` (see the module table), taken on its root cause."""
    cause = root_cause(exc)
    for classes, verdict in _RULES:
        if isinstance(cause, classes):
            return verdict
    return Failure.FATAL


def is_failover(exc: BaseException) -> bool:
    """True when ``exc`` means "a replica or its leadership is gone" (``RETRY``): re-submit
    to the new leader instead of failing."""
    return classify(exc) is Failure.RETRY
