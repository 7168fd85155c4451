"""An in-process fake of ``paramserver.ParameterServer``: plain numpy SGD, no Raft, no actors.

Implements the facade the driver uses (``jobs.backend.ParameterServerLike``) with the same
contracts that matter to the driver: versions count applied rounds (contributions in async),
contributions are summed in rank order and divided by the total sample count, duplicates
are no-ops, a NaN/inf mean gradient raises ``FakeNonFiniteError`` from ``wait_version`` (and
changes nothing), and checkpoints are atomic ``.npz`` files under ``out_dir/checkpoints``.
Large 2-D tensors are split into two row pieces so the workers' reassembly is exercised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from jobs.config import TrainConfig

SPLIT_ROWS = 64  # tensors with at least this many rows are cut into two row pieces
_CKPT = re.compile(r"^fake-round-(\d+)\.npz$")


class FakeNonFiniteError(Exception):
    """The mean gradient of a round holds NaN/inf; the round was not applied."""


def plan_layout(
    shapes: Mapping[str, tuple[int, ...]], shards: int
) -> list[list[tuple[str, str, int, int]]]:
    """Pieces (whole or two row halves) assigned greedily to the least-loaded shard."""
    pieces: list[tuple[int, tuple[str, str, int, int]]] = []
    for name in sorted(shapes):
        shape = shapes[name]
        rows = shape[0] if shape else 1
        size = int(np.prod(shape)) if shape else 1
        if len(shape) >= 2 and rows >= SPLIT_ROWS:
            half = rows // 2
            for start, stop in ((0, half), (half, rows)):
                pieces.append((size // 2, (f"{name}#{start}:{stop}", name, start, stop)))
        else:
            pieces.append((size, (name, name, 0, rows)))
    layout: list[list[tuple[str, str, int, int]]] = [[] for _ in range(shards)]
    load = [0] * shards
    for size, piece in sorted(pieces, key=lambda p: (-p[0], p[1][0])):
        s = load.index(min(load))
        layout[s].append(piece)
        load[s] += size
    return layout


class FakeParameterServer:
    """Synchronous in-process server; ``submit`` applies as soon as a round is complete."""

    def __init__(self, config: TrainConfig, initial: Mapping[str, np.ndarray]) -> None:
        if config.optimizer not in ("sgd", "momentum"):
            raise ValueError("the fake server only implements sgd and momentum")
        self.config = config
        self.params = {k: np.array(v, dtype=np.float32) for k, v in initial.items()}
        self.velocity = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.layout = plan_layout({k: v.shape for k, v in self.params.items()}, config.shards)
        self.version = 0
        self.pending: dict[int, dict[int, list[Any]]] = {}
        self.closed: set[int] = set()
        self.error: Exception | None = None
        self.calls: list[tuple[str, int]] = []
        self._published: tuple[int, list[Any]] | None = None

    # -- reads ---------------------------------------------------------------
    def pull(self, min_version: int) -> list[Any]:
        if self.version < min_version:
            raise TimeoutError(f"fake at version {self.version} < {min_version}")
        if self._published is None or self._published[0] != self.version:
            refs = []
            for shard in self.layout:
                refs.append(ray.put({key: self.params[t][a:b] if key != t else self.params[t]
                                     for key, t, a, b in shard}))
            self._published = (self.version, refs)
        return list(self._published[1])

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def status(self) -> list[dict[str, object]]:
        return [{"shard": s, "version": self.version} for s in range(len(self.layout))]

    # -- writes --------------------------------------------------------------
    def submit(self, round: int, rank: int, grad_refs: Sequence[Any], param_version: int) -> None:
        self.calls.append(("submit", round))
        if self.config.mode == "async":
            self._apply([list(grad_refs)])
            return
        if round < self.version:
            return  # stale or duplicate: a no-op
        self.pending.setdefault(round, {}).setdefault(rank, list(grad_refs))
        self._drain()

    def close_round(self, round: int) -> None:
        self.calls.append(("close", round))
        self.closed.add(round)
        self._drain()

    def _drain(self) -> None:
        while self.error is None:
            got = self.pending.get(self.version, {})
            need = self.config.workers
            if self.version in self.closed:
                need = self.config.workers - self.config.backup_workers
            if len(got) < need or not got:
                return
            self._apply([got[r] for r in sorted(got)])
            if self.error is None:
                self.pending.pop(self.version - 1, None)

    def _apply(self, contributions: list[list[Any]]) -> None:
        flat = [ref for refs in contributions for ref in refs]
        values = ray.get(flat, timeout=60)
        shards = len(self.layout)
        samples = sum(values[i][0] for i in range(0, len(values), shards))
        sums: dict[str, np.ndarray] = {}
        for c in range(len(contributions)):  # rank order
            for s in range(shards):
                for key, grad in values[c * shards + s][1].items():
                    sums[key] = grad.copy() if key not in sums else sums[key] + grad
        full = {k: np.zeros_like(v) for k, v in self.params.items()}
        for shard in self.layout:
            for key, t, a, b in shard:
                full[t][a:b] = sums[key] / np.float32(samples)
        if not all(np.isfinite(g).all() for g in full.values()):
            self.error = FakeNonFiniteError(f"round {self.version}: non-finite gradient")
            return
        lr, mom = np.float32(self.config.lr), np.float32(
            self.config.momentum if self.config.optimizer == "momentum" else 0.0)
        for k, g in full.items():
            if mom:
                self.velocity[k] = mom * self.velocity[k] + g
                g = self.velocity[k]
            self.params[k] = self.params[k] - lr * g
        self.version += 1

    def wait_version(self, version: int, timeout: float) -> None:
        if self.error is not None:
            raise self.error
        if self.version < version:
            raise TimeoutError(f"fake server at version {self.version}, wanted {version}")

    # -- checkpoints ---------------------------------------------------------
    def _per_round(self) -> int:
        return self.config.workers if self.config.mode == "async" else 1

    def checkpoint(self, out_dir: str | Path, round: int) -> Path:
        if round * self._per_round() != self.version:
            raise ValueError(f"fake checkpoint at {round} but version is {self.version}")
        folder = Path(out_dir) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"fake-round-{round:08d}.npz"
        tmp = folder / f".tmp-{round}.npz"
        arrays: dict[str, Any] = {f"p/{k}": v for k, v in self.params.items()}
        arrays.update({f"v/{k}": v for k, v in self.velocity.items()})
        with tmp.open("wb") as fh:
            arrays["round"] = np.array(round)
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        return path

    def restore(self, checkpoint: str | Path) -> int:
        with np.load(checkpoint) as data:
            self.params = {k[2:]: data[k].copy() for k in data.files if k.startswith("p/")}
            self.velocity = {k[2:]: data[k].copy() for k in data.files if k.startswith("v/")}
            round = int(data["round"])
        self.version = round * self._per_round()
        return round

    def shutdown(self) -> None:
        self.pending.clear()


class FakeBackend:
    """``jobs.backend.ServerBackend`` returning ``FakeParameterServer``s; remembers them."""

    def __init__(self) -> None:
        self.servers: list[FakeParameterServer] = []

    def create(
        self, config: TrainConfig, initial: Mapping[str, np.ndarray]
    ) -> FakeParameterServer:
        server = FakeParameterServer(config, initial)
        self.servers.append(server)
        return server

    def latest_checkpoint(self, out_dir: Path) -> Path | None:
        folder = Path(out_dir) / "checkpoints"
        found = sorted((int(m.group(1)), p) for p in folder.glob("*.npz")
                       if (m := _CKPT.match(p.name)))
        return found[-1][1] if found else None
