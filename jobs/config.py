"""TrainConfig: every knob of one training job, frozen, keyword-only, validated on creation."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Literal

from jobs.errors import ConfigError

Mode = Literal["sync", "ssp", "async"]
Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
MODES: tuple[str, ...] = ("sync", "ssp", "async")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")


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
    shards: int = 2
    """Parameter shards (S), each its own Raft group."""
    replicas: int = 3
    """Raft replicas per shard."""
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
    weight_decay: float = 0.0
    """Weight decay (L2 for sgd/momentum/adam, decoupled for adamw)."""
    seed: int = 0
    """Seeds model init (``torch.manual_seed``) and the batch schedule."""
    out: str = "runs/default"
    """Output folder: model.safetensors, summary.json, metrics.jsonl, curves.png, checkpoints/."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out`` (error if there is none)."""
    gpu: float = 0.0
    """GPUs per gradient task (fractional ok); 0 runs on CPU. No GPU visible → CPU + a warning."""
    checkpoint_every: int = 100
    """Checkpoint every this many rounds (0: only at the end). A checkpoint is always written
    at the end."""
    address: str | None = None
    """Ray address to connect to; None uses ``RAY_ADDRESS`` or starts an embedded Ray."""
    job: str = "raftps"
    """Job name: prefix of actor names and the Ray namespace."""
    nonfinite_policy: Literal["error", "skip-round"] = "error"
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
        if not self.out:
            raise ConfigError("out must name an output folder, e.g. --out runs/mine")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.job):
            raise ConfigError(f"job name {self.job!r} may only use letters, digits, '_', '.', '-'")
        if self.gpu < 0 or not math.isfinite(self.gpu):
            raise ConfigError(f"gpu must be >= 0 (GPUs per task, fractional ok), got {self.gpu}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")

    def _check_counts(self) -> None:
        for name in ("workers", "shards", "replicas", "epochs", "global_batch"):
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
        if self.nonfinite_policy not in ("error", "skip-round"):
            raise ConfigError("nonfinite_policy must be 'error' or 'skip-round'")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready copy of every field (for summary.json)."""
        return asdict(self)
