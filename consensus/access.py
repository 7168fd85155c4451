"""Who may call what on a replica: the group's secret and a service's public methods.

A Raft group has one secret (``RaftGroup.create`` draws 32 random bytes). Its replicas and
its ``RaftGroup`` client hold it; a call that changes the group (a Raft message, a proposal,
a membership change, a leadership transfer) must carry it, checked in constant time. A
service object plugged into the replicas lists the methods callers may reach through
``call_service`` in a class attribute ``service_methods``; nothing else is callable.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

from consensus.errors import ConfigError, ConsensusError

__all__ = [
    "MIN_SECRET_BYTES",
    "SERVICE_METHODS",
    "GroupSecretError",
    "SecretGate",
    "ServiceMethodError",
    "check_secret",
    "public_methods",
    "service_method",
]

SERVICE_METHODS = "service_methods"
"""The class attribute in which a service lists its public method names."""
MIN_SECRET_BYTES = 16

log = logging.getLogger(__name__)


class GroupSecretError(ConsensusError):
    """A call that changes a Raft group came without the group's secret (from outside the
    group, or from a replica of another or an earlier group under the same name)."""


class ServiceMethodError(ConsensusError):
    """``call_service`` named a method the group's service does not declare public."""

    def __init__(self, group: str, service: str, method: object,
                 allowed: Iterable[str]) -> None:
        self.group, self.service, self.method = group, service, method
        self.allowed = tuple(sorted(allowed))
        listed = ", ".join(self.allowed) if self.allowed else "none"
        super().__init__(
            f"group {group}: {method!r} is not a public method of its service {service}; "
            f"callable: {listed}. Call one of those, or list the method in "
            f"{service}.{SERVICE_METHODS}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.group, self.service, self.method, self.allowed))


def check_secret(expected: bytes, given: object, what: str) -> None:
    """Raise GroupSecretError unless ``given`` is ``expected`` (constant-time comparison);
    ``what`` names the refused call in the message."""
    if not isinstance(given, bytes) or not hmac.compare_digest(expected, given):
        raise GroupSecretError(
            f"{what} was refused: it needs the group's secret, which only the group's "
            "replicas and its RaftGroup client hold. Call through RaftGroup (propose, "
            "replace, transfer_leadership) instead of the replica actor")


class SecretGate:
    """The secret check of one replica: counts what it refuses and logs the first refusal
    (then every thousandth), so a misdirected caller shows up without flooding the log."""

    def __init__(self, secret: bytes, where: str) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the group secret must be at least {MIN_SECRET_BYTES} random "
                              "bytes (RaftGroup.create draws one per group)")
        self._secret, self._where = secret, where
        self.refused = 0

    def admit(self, given: object, what: str) -> None:
        """Return if ``given`` is the secret, else count, maybe log, raise GroupSecretError."""
        try:
            check_secret(self._secret, given, f"{what} on {self._where}")
        except GroupSecretError:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("%s refused %d call(s) without the group's secret (latest: %s)",
                            self._where, self.refused, what)
            raise


def public_methods(service: object) -> frozenset[str]:
    """The names in ``type(service).service_methods`` that name a callable of ``service``;
    names starting with ``_`` never count."""
    declared = getattr(type(service), SERVICE_METHODS, ())
    if isinstance(declared, str) or not isinstance(declared, Iterable):
        return frozenset()
    return frozenset(name for name in declared
                     if isinstance(name, str) and not name.startswith("_")
                     and callable(getattr(service, name, None)))


def service_method(service: object, method: object, group: str) -> Callable[..., Any]:
    """``service``'s bound method ``method`` if the service declares it public, else
    ServiceMethodError naming the method and the allowed set."""
    allowed = public_methods(service)
    if not isinstance(method, str) or method not in allowed:
        raise ServiceMethodError(group, type(service).__name__, method, allowed)
    found: Callable[..., Any] = getattr(service, method)
    return found
