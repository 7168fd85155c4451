"""Membership arithmetic: the voters and learners after one single-server change.

A learner receives the log (entries and snapshots) like a voter but counts toward no quorum
and never campaigns; a new server joins as one and is promoted once it caught up (thesis
§4.2.1), so adding it never raises the quorum while it still has to receive the state.
"""

from __future__ import annotations

from consensus.errors import ConfigError
from consensus.types import ConfChange, ConfChangeKind

Members = tuple[tuple[int, ...], tuple[int, ...]]
"""(voters, learners), each sorted, disjoint."""


def apply_change(voters: tuple[int, ...], learners: tuple[int, ...], cc: ConfChange) -> Members:
    """The membership after ``cc``. A change already in force returns the same membership
    (adding a voter, removing a non-member, promoting a voter, adding a voter as a learner:
    a voter is never demoted). Raises ConfigError for promoting a node that is neither a
    learner nor a voter."""
    vs, ls = set(voters), set(learners)
    node = cc.node
    if cc.kind == ConfChangeKind.ADD:
        vs.add(node)
        ls.discard(node)
    elif cc.kind == ConfChangeKind.REMOVE:
        vs.discard(node)
        ls.discard(node)
    elif cc.kind == ConfChangeKind.ADD_LEARNER:
        if node not in vs:
            ls.add(node)
    elif cc.kind == ConfChangeKind.PROMOTE:
        if node not in vs and node not in ls:
            raise ConfigError(f"cannot promote node {node}: it is not a learner of this group "
                              f"(voters {voters}, learners {learners}); add it as a learner "
                              "first")
        vs.add(node)
        ls.discard(node)
    else:
        raise ConfigError(f"unknown membership change kind {cc.kind!r}")
    return tuple(sorted(vs)), tuple(sorted(ls))


def in_force(voters: tuple[int, ...], learners: tuple[int, ...], cc: ConfChange) -> bool:
    """True when ``cc`` would change nothing: it is already done."""
    if cc.kind == ConfChangeKind.PROMOTE and cc.node not in voters and cc.node not in learners:
        return False
    return apply_change(voters, learners, cc) == (tuple(sorted(voters)), tuple(sorted(learners)))
