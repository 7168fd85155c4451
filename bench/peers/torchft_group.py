"""One torchft replica group of ``bench.peers.torchft_goodput``: one OS process, one worker.

The process trains the bench MLP with a torchft ``Manager`` (its own ``TCPStore``, a
``ProcessGroupGloo`` reconfigured per quorum), torchft's DDP wrapper (``torchft_ddp``, whose
gradient hook survives a peer's death) and ``torchft.optim.OptimizerWrapper`` around
``torch.optim.SGD``. Quorums are synchronous
(``use_async_quorum=False``): the quorum, and the healing of a group that restarted, finish
before the forward pass, so the step index that picks the batch is the step the quorum agreed
on and a recovered group contributes to the very step it healed into.

Step ``s`` uses samples ``[s*G, (s+1)*G)`` of the shared data set, group ``r`` its ``r``-th
half (``group_samples``). The gradient is averaged over the groups in the step's quorum
(torchft's ``WorldSizeMode.DYNAMIC``: the all-reduced sum is divided by the number of
participants). A step committed while one group is missing therefore applies the mean
gradient of the surviving group's ``batch_per_worker`` samples alone, with the same learning
rate: it is a half-size step, and the missing group's half of that step is never trained on.

Every attempt is appended to the group's step log as one line (``torchft_ledger``):
``commit`` when ``should_commit`` agreed and the optimizer stepped, ``abort`` when the step was
discarded (a peer died mid-step; torchft then runs the same step index again). After the last
step the raw model's ``state_dict`` is saved with ``torch.save`` to ``--final``.

Run by the coordinator as ``python -m bench.peers.torchft_group ...``; not a user entry point.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.peers.torchft_ledger import format_event

TIMEOUT_S = 20
"""torchft's operation timeout (all-reduce, should_commit, checkpoint transfer) and gloo's."""
QUORUM_TIMEOUT_S = 120
"""How long one quorum may take (a restarted peer's import and start-up included)."""
GO_POLL_S = 0.01


def group_samples(step: int, group: int, batch_per_worker: int, groups: int = 2) -> tuple[int, int]:
    """The sample range ``[lo, hi)`` group ``group`` trains on in step ``step``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= group < groups:
        raise ValueError(f"group must be in [0, {groups}), got {group}")
    if batch_per_worker < 1:
        raise ValueError(f"batch_per_worker must be >= 1, got {batch_per_worker}")
    lo = step * groups * batch_per_worker + group * batch_per_worker
    return lo, lo + batch_per_worker


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.torchft_group")
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--lighthouse", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-per-worker", type=int, required=True)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, required=True, help="folder with x.npy, y.npy")
    parser.add_argument("--log", type=Path, required=True, help="step log to append to")
    parser.add_argument("--ready", type=Path, required=True, help="written once heartbeating")
    parser.add_argument("--go", type=Path, required=True, help="waited for before step 0")
    parser.add_argument("--final", type=Path, required=True, help="final state_dict file")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    """Run the group until its manager has committed ``args.steps`` steps."""
    import numpy as np
    import torch
    import torch.nn.functional as functional
    from torch._C._distributed_c10d import TCPStore
    from torchft.manager import Manager
    from torchft.optim import OptimizerWrapper
    from torchft.process_group import ProcessGroupGloo

    from bench.common import build_mlp
    from bench.peers.torchft_ddp import DistributedDataParallel

    torch.set_num_threads(args.threads)
    xs = np.load(args.data / "x.npy", mmap_mode="r")
    ys = np.load(args.data / "y.npy", mmap_mode="r")
    torch.manual_seed(args.seed)
    model = build_mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr)

    def state_dict() -> dict[str, Any]:
        return {"model": model.state_dict(), "optim": sgd.state_dict()}

    def load_state_dict(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        sgd.load_state_dict(state["optim"])

    store = TCPStore(host_name="localhost", port=0, is_master=True, wait_for_workers=False)
    timeout = timedelta(seconds=TIMEOUT_S)
    manager = Manager(
        pg=ProcessGroupGloo(timeout=timeout),
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        min_replica_size=1,
        use_async_quorum=False,
        timeout=timeout,
        quorum_timeout=timedelta(seconds=QUORUM_TIMEOUT_S),
        connect_timeout=timeout,
        rank=0,
        world_size=1,
        store_addr="localhost",
        store_port=store.port,
        lighthouse_addr=args.lighthouse,
        replica_id=f"group{args.group}",
        hostname="localhost",
        init_sync=False,  # every group builds the same model from the same seed
    )
    ddp = DistributedDataParallel(manager, model)
    optimizer = OptimizerWrapper(manager, sgd)
    args.ready.write_text(str(os.getpid()))
    while not args.go.exists():
        time.sleep(GO_POLL_S)

    with args.log.open("a", buffering=1) as log:
        log.write("\n")  # ends a line a killed predecessor may have left unfinished
        while manager.current_step() < args.steps:
            optimizer.zero_grad()  # the quorum; a restarted group heals here
            step = manager.current_step()
            if step >= args.steps:
                break  # healed into a finished run
            batches = len(xs) // (args.groups * args.batch_per_worker)  # the set is cycled
            lo, hi = group_samples(step % batches, args.group, args.batch_per_worker,
                                   args.groups)
            x = torch.from_numpy(np.array(xs[lo:hi]))
            y = torch.from_numpy(np.array(ys[lo:hi]))
            loss = functional.cross_entropy(ddp(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()  # should_commit, then SGD only when it agreed
            kind = "commit" if manager.current_step() == step + 1 else "abort"
            log.write(format_event(kind, args.group, args.incarnation, step, time.time(),
                                   manager.num_participants()) + "\n")

    tmp = args.final.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.final)
    manager.shutdown(wait=False)


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(argv))
    os._exit(0)  # gloo and torchft threads may linger; the result is already on disk


if __name__ == "__main__":
    main()
