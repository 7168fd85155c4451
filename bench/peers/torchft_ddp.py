"""torchft's DDP wrapper with a gradient hook that survives a failed all-reduce on gloo.

``torchft.ddp.DistributedDataParallel`` (0.2.0) all-reduces each gradient bucket through the
``Manager`` and hands DDP the managed work's inner future. When a peer group dies mid-step,
gloo's ``wait`` raises ("Connection closed by peer"); the manager records the error, but the
inner future was never created and the hook fails an ``assert``, which crashes the surviving
group's backward pass instead of letting torchft discard the step. Later buckets of an
errored step get a plain completed future, which that hook cannot unwrap either.

This subclass keeps torchft's behaviour when the all-reduce succeeds and otherwise returns
the local bucket unchanged: the manager has the error, ``should_commit`` refuses the step on
every group, the optimizer does not step, and the step index is run again by the next quorum.

(No ``from __future__ import annotations`` here: DDP checks the hook's ``bucket`` annotation
is ``GradBucket`` itself, not a string.)
"""

from typing import Any

import torch
from torch._C._distributed_c10d import GradBucket
from torchft.ddp import DistributedDataParallel as TorchftDDP


def gradient_future(work: Any, buffer: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    """The future DDP waits on for ``buffer``'s all-reduce ``work`` (a ``Manager`` work).

    A succeeded managed work yields its inner, normalising future; a failed or dummy one
    yields ``buffer`` itself, already complete (the step is discarded anyway).
    """
    ok = work.wait()
    inner = getattr(work.get_future(), "_fut", None)
    if ok and inner is not None:
        return inner  # type: ignore[no-any-return]
    done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    done.set_result(buffer)
    return done


class DistributedDataParallel(TorchftDDP):  # type: ignore[misc]
    """``torchft.ddp.DistributedDataParallel`` whose hook tolerates a failed all-reduce."""

    @staticmethod
    def _comm_hook(state: Any, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        return gradient_future(state.allreduce(buffer), buffer)
