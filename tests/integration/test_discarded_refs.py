"""``DiscardedRefs.drain``: a discarded task that is still waiting for an input at the end
is cancelled and its error read, so Ray has no unread error to log when it is freed."""

from __future__ import annotations

import pytest
import ray

from consensus.discarded_refs import DiscardedRefs

pytestmark = pytest.mark.usefixtures("ray_session")


@ray.remote
class _Never:
    def __init__(self) -> None:
        import threading
        self._gate = threading.Event()

    def value(self) -> int:
        self._gate.wait()  # never set: the answer never comes
        return 1


@ray.remote
def _uses(value: int) -> int:
    return value + 1


def test_a_pending_task_is_cancelled_and_read_at_drain() -> None:
    never = _Never.options(max_concurrency=2).remote()  # type: ignore[attr-defined]
    waiting = _uses.remote(never.value.remote())  # waits for an input that never comes
    discarded = DiscardedRefs()
    discarded.add([waiting])
    assert len(discarded) == 1
    assert discarded.drain(0.2, cancel_wait=20.0) == 0
    assert len(discarded) == 0
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(waiting, timeout=5)
    ray.kill(never)
