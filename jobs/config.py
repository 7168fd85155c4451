"""TrainConfig: every knob of one training job, frozen, keyword-only, validated on creation."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from jobs.errors import ConfigError

Mode = Literal["sync", "ssp", "async"]
Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
Durability = Literal["disk", "memory"]
NonFinitePolicy = Literal["error", "skip-round"]
MODES: tuple[str, ...] = ("sync", "ssp", "async")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
DURABILITIES: tuple[str, ...] = ("disk", "memory")
NONFINITE_POLICIES: tuple[str, ...] = ("error", "skip-round")
ADAM_LR = 1e-3
"""The CLI's learning rate for ``adam``/``adamw`` when ``--lr`` is not given (see
``default_lr``)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training job. Defaults are the default job: cnn on digits, >= 97 % test accuracy.

    Invalid values or combinations raise ``ConfigError`` (a ``ValueError``) naming the fix.
    """

    model: str = "cnn"
    """Model: ``mlp``, ``cnn`` or ``package.module:factory`` (a callable given to ``jobs.train``
    overrides this; the string is then only a label)."""
    data: str = "digits"
    """Data: ``digits``, ``synthetic[:FxC[xTRAIN[xTEST]]]`` or ``package.module:loader``."""
    workers: int = 2
    """Gradient tasks per round (N), including backup workers."""
    shards: int | Literal["auto"] = 2
    """Parameter shards (S), each its own Raft group; >= 1, or ``"auto"``: the driver picks
    about one shard per 256 MiB of shard state (parameters plus optimizer state: x2 with
    momentum, x3 for adam/adamw), at least 1 and at most ``max(1, cluster CPUs // replicas)``
    and the number of pieces the plan can cut (``paramserver.plan.auto_shards``); with
    ``resume`` the checkpoint's count. summary.json records the count used."""
    replicas: int = 3
    """Raft replicas per shard."""
    durability: Durability = "disk"
    """Raft log of the shard groups: ``disk`` fsyncs every entry before a replica acknowledges
    it (a crash of a whole group loses nothing); ``memory`` counts an entry once a majority
    holds it in memory and makes snapshots durable periodically (faster; a whole-group crash
    falls back to the last durable snapshot, or to the last checkpoint with ``resume``)."""
    mode: Mode = "sync"
    """``sync`` (BSP), ``ssp`` (workers up to ``staleness`` rounds ahead) or ``async``."""
    staleness: int = 0
    """SSP bound s: round r may start on parameters of version >= r - s. Only with ``ssp``."""
    backup_workers: int = 0
    """b: a round completes with N - b contributions once ``straggler_timeout`` has passed."""
    straggler_timeout: float = 10.0
    """Seconds from a round's launch after which stragglers are dropped (with backup workers)."""
    epochs: int = 10
    """Passes over the training set."""
    global_batch: int = 64
    """G: samples per round, split into N equal worker slices (must be a multiple of N)."""
    optimizer: Optimizer = "momentum"
    """Server-side optimizer: ``sgd``, ``momentum`` (SGD with ``momentum``), ``adam``, ``adamw``."""
    lr: float = 0.05
    """Learning rate (constant schedule)."""
    momentum: float = 0.9
    """Momentum of the ``momentum`` optimizer; ignored by the others."""
    nesterov: bool = False
    """Nesterov momentum (``torch.optim.SGD(nesterov=True)``); only with ``momentum``."""
    weight_decay: float = 0.0
    """Weight decay (L2 for sgd/momentum/adam, decoupled for adamw)."""
    seed: int = 0
    """Seeds model init (``torch.manual_seed``) and the batch schedule."""
    out: str = "runs/default"
    """Output folder: model.safetensors, summary.json, metrics.jsonl, curves.png, checkpoints/."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out`` (error if there is none). It needs only
    ``out/checkpoints/`` (the newest ``round-<r>/`` with its manifest), the same model and
    the same shard count; the Raft log is not needed: the groups start fresh and the
    checkpoint is restored through Raft."""
    keep_raft_log: bool = False
    """Keep the shard groups' Raft logs (``<out>/raft``) after a clean finish. By default they
    are deleted once model.safetensors, summary.json and the final checkpoint are written; a
    failed run always keeps them (for diagnosis; ``resume`` does not need them)."""
    gpu: float = 0.0
    """GPUs per gradient task (fractional ok); 0 runs on CPU. No GPU visible → CPU + a warning."""
    checkpoint_every: int = 100
    """Checkpoint every this many rounds (0: only at the end). A checkpoint is always written
    at the end."""
    address: str | None = None
    """Ray address to connect to; None uses ``RAY_ADDRESS`` or starts an embedded Ray."""
    job: str = "raftps"
    """Job name: prefix of actor names and the Ray namespace of the shard replicas
    (``ray.get_actor("<job>/shard-0/replica-0", namespace="<job>")``)."""
    nonfinite_policy: NonFinitePolicy = "error"
    """What the server does with a NaN/inf gradient: stop with an error, or skip the round."""
    timeout_s: float = 300.0
    """Upper bound on any single blocking wait of the driver (a round, a ray.get)."""
    max_rounds: int | None = None
    """Stop after this many rounds in total (a budget; None runs every epoch). The stop is
    checkpointed, so ``resume`` continues exactly where it left off."""
    progress: bool = True
    """Show per-epoch progress on stdout (a bar on a TTY, one line per epoch otherwise)."""
    pipeline: bool = True
    """``sync`` without backup workers: compute round t+1 on the leaders' preview of version
    t+1 while round t commits (same bits, see docs/ARCHITECTURE.md). False: launch round t+1
    only after every shard applied round t (strict BSP, slower)."""

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_modes()
        self._check_optimizer()
        if self.durability not in DURABILITIES:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITIES)}, "
                              f"got {self.durability!r}")
        if not self.out:
            raise ConfigError("out must name an output folder, e.g. --out runs/mine")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.job):
            raise ConfigError(f"job name {self.job!r} may only use letters, digits, '_', '.', '-'")
        if self.gpu < 0 or not math.isfinite(self.gpu):
            raise ConfigError(f"gpu must be >= 0 (GPUs per task, fractional ok), got {self.gpu}")
        if not self.timeout_s > 0 or not math.isfinite(self.timeout_s):
            raise ConfigError(f"timeout must be a positive number of seconds, got "
                              f"{self.timeout_s}; e.g. --timeout 300")

    def _check_counts(self) -> None:
        if self.shards != "auto" and (not isinstance(self.shards, int) or self.shards < 1):
            raise ConfigError(f"shards must be >= 1 or 'auto', got {self.shards!r}; "
                              "e.g. --shards 2 or --shards auto")
        for name in ("workers", "replicas", "epochs", "global_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch % self.workers != 0:
            raise ConfigError(
                f"global batch {self.global_batch} must be a multiple of workers {self.workers} "
                "(each worker gets an equal slice); change --global-batch or --workers"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1 or None, got {self.max_rounds}")

    def _check_modes(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.staleness < 0:
            raise ConfigError(f"staleness must be >= 0, got {self.staleness}")
        if self.staleness > 0 and self.mode != "ssp":
            raise ConfigError("staleness only applies to --mode ssp; add --mode ssp or drop it")
        if self.mode == "ssp" and self.staleness < 1:
            raise ConfigError("--mode ssp needs --staleness >= 1 (0 is plain sync)")
        if not 0 <= self.backup_workers < self.workers:
            raise ConfigError(
                f"backup workers must be in [0, workers); got {self.backup_workers} with "
                f"{self.workers} workers: lower --backup-workers or raise --workers"
            )
        if self.backup_workers and self.mode == "async":
            raise ConfigError("backup workers need rounds: use --mode sync or ssp with them")
        if not self.straggler_timeout > 0 or not math.isfinite(self.straggler_timeout):
            raise ConfigError(
                f"straggler timeout must be a positive number of seconds, "
                f"got {self.straggler_timeout}"
            )

    def _check_optimizer(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and (self.optimizer != "momentum" or self.momentum <= 0):
            raise ConfigError("nesterov needs the momentum optimizer with momentum > 0: use "
                              "--optimizer momentum (and --momentum > 0) or drop --nesterov")
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite_policy must be one of {', '.join(NONFINITE_POLICIES)}, "
                              f"got {self.nonfinite_policy!r}")

    @property
    def storage_dir(self) -> Path:
        """Where the shard replicas keep their Raft logs: ``<out>/raft``, absolute (resolved
        in the driver's working directory). Holds nothing but this job's groups; a fresh
        run clears it, a clean finish deletes it unless ``keep_raft_log``."""
        return Path(self.out).resolve() / "raft"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready copy of every field (for summary.json)."""
        return asdict(self)


def default_lr(optimizer: str) -> float:
    """The CLI's learning rate when ``--lr`` is not given: ``ADAM_LR`` for adam/adamw,
    ``TrainConfig``'s default otherwise (the API default is ``TrainConfig.lr`` for all)."""
    return ADAM_LR if optimizer in ("adam", "adamw") else TrainConfig.lr
