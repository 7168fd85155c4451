"""The environment a replica process starts with (its actor's ``runtime_env``).

A replica runs about forty threads (Ray's own, the transport's, the apply, disk and
layer-step pools). glibc gives threads up to eight malloc arenas per core, and the buffers
a large model's rounds allocate and free on those threads leave hundreds of MB resident in
them: a 124M-parameter model's follower held 333 MB in arenas next to its 744 MB of state.
Two arenas keep that bounded (``MALLOC_ARENA_MAX``); numpy's large arrays are separate
mappings either way. A value set in the creating process's environment wins. Ray merges an
actor's ``env_vars`` with the job's runtime environment, so a job's own settings stay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MALLOC_ARENAS = "2"


def replica_env_vars(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``env_vars`` for a replica actor's ``runtime_env``."""
    return {"MALLOC_ARENA_MAX": environ.get("MALLOC_ARENA_MAX", MALLOC_ARENAS)}
