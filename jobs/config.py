"""TrainConfig: every knob of one training job, frozen, keyword-only, validated on creation."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from jobs.errors import ConfigError
from jobs.model_args import ModelArg, check_model_kwargs

Mode = Literal["sync", "ssp", "async"]
Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
Durability = Literal["disk", "memory"]
NonFinitePolicy = Literal["error", "skip-round"]
LrSchedule = Literal["constant", "step", "cosine"]
MODES: tuple[str, ...] = ("sync", "ssp", "async")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
DURABILITIES: tuple[str, ...] = ("disk", "memory")
NONFINITE_POLICIES: tuple[str, ...] = ("error", "skip-round")
LR_SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")
TRACKERS: tuple[str, ...] = ("jsonl", "tensorboard", "mlflow")
"""Where ``log_to`` sends the per-round metrics (``jobs.tracking``); ``jsonl`` is
metrics.jsonl, which is always written."""
SGD_LR = 0.05
"""The learning rate of ``sgd``/``momentum`` when none is given (see ``default_lr``)."""
ADAM_LR = 1e-3
"""The learning rate of ``adam``/``adamw`` when none is given (see ``default_lr``)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training job. Defaults are the default job: cnn on digits, >= 97 % test accuracy.

    Invalid values or combinations raise ``ConfigError`` (a ``ValueError``) naming the fix.
    """

    model: str = "cnn"
    """Model: ``mlp``, ``cnn`` or ``package.module:factory`` (a callable given to ``jobs.train``
    overrides this; the string is then only a label)."""
    model_kwargs: dict[str, ModelArg] = field(default_factory=dict)
    """Keyword arguments of the model factory, called as ``factory(**model_kwargs)`` (CLI:
    ``--model-arg key=value``, repeatable). Values are JSON scalars (str, int, float, bool,
    None), recorded in summary.json; the built-in models take none. The factory's signature
    is checked against them before anything runs."""
    data: str = "digits"
    """Data: ``digits``, ``synthetic[:FxC[xTRAIN[xTEST]]]`` or ``package.module:loader``."""
    dataset: str | None = None
    """A dataset addressed by index instead of ``data`` (docs/DESIGN.md, "Datasets"):
    ``npy:DIR`` (a directory of x_train.npy, y_train.npy, x_test.npy, y_test.npy, read
    memory-mapped) or ``package.module:name`` (a callable returning the train and test
    splits: map-style datasets or ray.data Datasets). Gradient tasks open it themselves and
    read only their indices; the driver never loads it whole. ``data`` must then stay at its
    default. None: ``data`` is used."""
    loss: str = "cross_entropy"
    """The training loss (``workers.loss``): ``cross_entropy`` (class ids; per-token mean
    for ``(b, T, V)`` outputs), ``mse``, or ``package.module:fn`` with ``fn(outputs,
    targets)`` returning per-sample losses of shape ``(b,)``; tasks sum them."""
    metric: str | None = None
    """The metric reported per round and on the test set (``workers.metric``):
    ``accuracy``, ``none`` or ``package.module:fn`` (per-sample values, shape ``(b,)``).
    None: ``accuracy`` for ``cross_entropy``, ``none`` for any other loss; without a metric
    the test evaluation reports the mean loss."""
    workers: int | Literal["auto"] = 2
    """Gradient tasks per round (N), including backup workers; or ``"auto"`` (needs
    ``micro_batches``): each round gets one task per CPU of the cluster's alive nodes (per
    ``gpu`` GPUs with ``gpu``), 1..M, so the count follows nodes as they join and leave
    while the bits stay those of any fixed count (``jobs.elastic``). ``max_workers`` is the
    most a round runs."""
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
    micro_batches: int | None = None
    """M: cut each global batch into M equal, contiguous micro-batches (G must be a multiple
    of M; 1 <= N <= M); task i computes micro-batches ``[i*M // N, (i+1)*M // N)`` and the
    round's gradient is one fixed pairwise tree over micro-batch index 0..M-1, so the model
    bits are the same for any ``workers`` (``paramserver.microbatch``). Sync or ssp, without
    backup workers. None: one slice per worker, summed over ranks (the bits depend on N)."""
    optimizer: Optimizer = "momentum"
    """Server-side optimizer: ``sgd``, ``momentum`` (SGD with ``momentum``), ``adam``, ``adamw``."""
    lr: float | None = None
    """Base learning rate; None: the optimizer's default, ``default_lr(optimizer)`` (0.05
    for sgd/momentum, 1e-3 for adam/adamw). ``learning_rate`` is the value used."""
    lr_schedule: LrSchedule = "constant"
    """How the learning rate changes with the round (``paramserver.schedule``): ``constant``;
    ``step`` (times ``lr_gamma`` every ``lr_step_size`` rounds, like StepLR); ``cosine``
    (from the base rate down to ``lr_min`` at round ``lr_total_rounds``, like
    CosineAnnealingLR). Every replica computes the rate from the committed round id alone.
    In ``async`` mode a "round" of the schedule is one applied step (N per global batch)."""
    lr_warmup_rounds: int = 0
    """Rounds of linear warmup before the schedule (``lr/W``, ``2·lr/W``, ... up to ``lr``);
    0: none."""
    lr_step_size: int = 1
    """``step``: rounds between decays; >= 1."""
    lr_gamma: float = 0.1
    """``step``: the decay factor, in (0, 1]."""
    lr_total_rounds: int | None = None
    """``cosine``: the round at which the rate reaches ``lr_min`` (warmup included); None:
    the run's rounds, ``epochs`` x rounds per epoch (x ``workers`` in async), resolved by the
    driver once the data is loaded and recorded in summary.json. ``max_rounds`` does not
    shorten it, so a stopped and resumed run follows the same curve."""
    lr_min: float = 0.0
    """``cosine``: the floor of the rate; >= 0 and below the base rate."""
    clip_grad_norm: float | None = None
    """Clip each gradient task's contribution by its global L2 norm: the task scales its
    summed gradient by ``min(1, X / (norm + 1e-6))``, where norm is that of its mean
    gradient (sum / its samples) over all parameters, all shards (``workers.clipping``).
    With one worker this is ``torch.nn.utils.clip_grad_norm_(params, X)`` on the batch's
    mean loss; with N workers each worker's slice is clipped on its own. None: no clipping."""
    momentum: float = 0.9
    """Momentum of the ``momentum`` optimizer; ignored by the others."""
    nesterov: bool = False
    """Nesterov momentum (``torch.optim.SGD(nesterov=True)``); only with ``momentum``."""
    weight_decay: float = 0.0
    """Weight decay (L2 for sgd/momentum/adam, decoupled for adamw)."""
    seed: int = 0
    """Seeds model init (``torch.manual_seed``) and the batch schedule."""
    out: str | None = None
    """Output folder: model.safetensors, summary.json, metrics.jsonl, curves.png, checkpoints/.
    None: ``default_out(model, data)``, ``runs/<model>-<data>`` (``<dataset>`` when one is
    given). ``out_dir`` is the path used."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out`` (error if there is none). It needs only
    ``out/checkpoints/`` (the newest ``round-<r>/`` with its manifest), the same model and
    the same shard count; the Raft log is not needed: the groups start fresh and the
    checkpoint is restored through Raft."""
    keep_raft_log: bool = False
    """Keep the shard groups' Raft logs (``<out>/raft``) after a clean finish. By default they
    are deleted once model.safetensors, summary.json and the final checkpoint are written; a
    failed run always keeps them (for diagnosis; ``resume`` does not need them)."""
    overwrite: bool = False
    """Let a fresh run (no ``resume``) replace an earlier run's results in ``out``
    (checkpoints/, metrics.jsonl, model.safetensors, summary.json). Without it such a run
    raises ``OutputExistsError`` before anything is touched (``jobs.outputs``)."""
    keep_checkpoints: int | None = 3
    """Checkpoints kept in ``out/checkpoints``: after each new one is written, all but the
    newest this many are deleted (the newest, which ``resume`` uses, always stays; the older
    ones are its fallbacks should it be corrupt). None keeps every one."""
    gpu: float = 0.0
    """GPUs per gradient task (fractional ok); 0 runs on CPU. A cluster with no GPU gets them
    from its autoscaler if it has one (the job waits), else the tasks run on the CPU, with a
    warning (``jobs.gpus``)."""
    wait_for_gpus: bool | None = None
    """With ``gpu``, on a cluster that has no GPU yet: True asks Ray's autoscaler for GPU
    nodes and waits for them, False runs on the CPU; None decides by whether the cluster's
    autoscaler can add nodes (``jobs.gpus.autoscaler_can_add_nodes``)."""
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
    log_to: tuple[str, ...] = ("jsonl",)
    """Experiment trackers that get the config once and each round's metrics
    (``jobs.tracking``): ``jsonl`` (metrics.jsonl), ``tensorboard`` (``<out>/tensorboard``)
    and ``mlflow`` (``MLFLOW_TRACKING_URI``, else ``<out>/mlruns``). metrics.jsonl is always
    written (resume and curves.png read it), so the value used always holds ``jsonl``
    first; names are kept once each, in order, and a single string is one name."""

    @property
    def max_workers(self) -> int:
        """The most gradient tasks one round runs: ``workers``, or M with ``"auto"``."""
        if self.workers == "auto":
            assert self.micro_batches is not None  # checked on creation
            return self.micro_batches
        return self.workers

    @property
    def elastic(self) -> bool:
        """``workers="auto"``: the task count is decided per round (``jobs.elastic``)."""
        return self.workers == "auto"

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_micro_batches()
        self._check_modes()
        self._check_optimizer()
        self._check_schedule()
        object.__setattr__(self, "model_kwargs", check_model_kwargs(self.model_kwargs))
        if self.durability not in DURABILITIES:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITIES)}, "
                              f"got {self.durability!r}")
        if self.out is not None and not self.out:
            raise ConfigError("out must name an output folder, e.g. --out runs/mine")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.job):
            raise ConfigError(f"job name {self.job!r} may only use letters, digits, '_', '.', '-'")
        if self.gpu < 0 or not math.isfinite(self.gpu):
            raise ConfigError(f"gpu must be >= 0 (GPUs per task, fractional ok), got {self.gpu}")
        self._check_outputs()
        self._check_objective()
        self._check_dataset()
        object.__setattr__(self, "log_to", check_log_to(self.log_to))
        if not self.timeout_s > 0 or not math.isfinite(self.timeout_s):
            raise ConfigError(f"timeout must be a positive number of seconds, got "
                              f"{self.timeout_s}; e.g. --timeout 300")

    def _check_objective(self) -> None:
        if not isinstance(self.loss, str) or not self.loss:
            raise ConfigError(f"loss must name a loss (cross_entropy, mse or "
                              f"package.module:fn), got {self.loss!r}")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ConfigError(f"metric must name a metric (accuracy, none or "
                              f"package.module:fn) or be None, got {self.metric!r}")

    def _check_dataset(self) -> None:
        if self.dataset is None:
            return
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset must be 'npy:DIR' or 'package.module:name' (or None), "
                              f"got {self.dataset!r}")
        if self.data != TrainConfig.data:
            raise ConfigError(f"data ({self.data!r}) and dataset ({self.dataset!r}) are two "
                              "sources for one job; give --data or --dataset, not both")

    def _check_outputs(self) -> None:
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume contradict each other: --resume "
                              "continues the earlier run, --overwrite replaces it; drop one")
        keep = self.keep_checkpoints
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)
                                 or keep < 1):
            raise ConfigError(f"keep_checkpoints must be >= 1 (or None: keep all), got "
                              f"{keep!r}; e.g. --keep-checkpoints 3 or --keep-checkpoints all")
        if self.wait_for_gpus and self.gpu <= 0:
            raise ConfigError("--wait-for-gpus only applies with --gpu; add --gpu or drop it")

    def _check_counts(self) -> None:
        if self.shards != "auto" and (not isinstance(self.shards, int) or self.shards < 1):
            raise ConfigError(f"shards must be >= 1 or 'auto', got {self.shards!r}; "
                              "e.g. --shards 2 or --shards auto")
        if self.workers == "auto":
            if self.micro_batches is None:
                raise ConfigError("--workers auto needs --micro-batches M (the round's sum "
                                  "over M micro-batches keeps the bits whatever the task "
                                  "count); add e.g. --micro-batches 8")
        elif isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise ConfigError(f"workers must be a count >= 1 or 'auto', got {self.workers!r}; "
                              "e.g. --workers 4 or --workers auto")
        for name in ("workers", "replicas", "epochs", "global_batch"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.micro_batches is None and self.global_batch % self.max_workers != 0:
            raise ConfigError(
                f"global batch {self.global_batch} must be a multiple of workers {self.workers} "
                "(each worker gets an equal slice); change --global-batch or --workers"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1 or None, got {self.max_rounds}")

    def _check_micro_batches(self) -> None:
        m = self.micro_batches
        if m is None:
            return
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"micro_batches must be an int >= 1 (or None), got {m!r}; "
                              "e.g. --micro-batches 8")
        if self.global_batch % m:
            raise ConfigError(f"--global-batch {self.global_batch} must be a multiple of "
                              f"--micro-batches {m} (equal micro-batches); change one of them")
        if self.max_workers > m:
            raise ConfigError(f"--workers {self.workers} exceeds --micro-batches {m} (each task "
                              "computes at least one micro-batch); lower --workers or raise "
                              "--micro-batches")
        if self.mode == "async":
            raise ConfigError("--micro-batches needs rounds: use --mode sync or ssp with it")
        if self.backup_workers:
            raise ConfigError("--micro-batches needs every micro-batch of a round: drop "
                              "--backup-workers or --micro-batches")

    def _check_modes(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.staleness < 0:
            raise ConfigError(f"staleness must be >= 0, got {self.staleness}")
        if self.staleness > 0 and self.mode != "ssp":
            raise ConfigError("staleness only applies to --mode ssp; add --mode ssp or drop it")
        if self.mode == "ssp" and self.staleness < 1:
            raise ConfigError("--mode ssp needs --staleness >= 1 (0 is plain sync)")
        if not 0 <= self.backup_workers < self.max_workers:
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
        if self.lr is not None and (not self.lr > 0 or not math.isfinite(self.lr)):
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
        if self.clip_grad_norm is not None and (
                not self.clip_grad_norm > 0 or not math.isfinite(self.clip_grad_norm)):
            raise ConfigError(f"clip_grad_norm must be a positive number (or None: no "
                              f"clipping), got {self.clip_grad_norm}; e.g. --clip-grad-norm 1.0")

    def _check_schedule(self) -> None:
        kind = self.lr_schedule
        if kind not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {kind!r}")
        if self.lr_warmup_rounds < 0:
            raise ConfigError(f"lr_warmup_rounds must be >= 0, got {self.lr_warmup_rounds}")
        if self.lr_step_size < 1:
            raise ConfigError(f"lr_step_size must be >= 1, got {self.lr_step_size}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if kind != "step" and (self.lr_step_size, self.lr_gamma) != (
                TrainConfig.lr_step_size, TrainConfig.lr_gamma):
            raise ConfigError("--lr-step-size and --lr-gamma only apply to --lr-schedule step; "
                              "add --lr-schedule step or drop them")
        if not (math.isfinite(self.lr_min) and 0 <= self.lr_min < self.learning_rate):
            raise ConfigError(f"lr_min must be >= 0 and below the learning rate "
                              f"{self.learning_rate:g}, got {self.lr_min}")
        total = self.lr_total_rounds
        if kind != "cosine" and (total is not None or self.lr_min != 0):
            raise ConfigError("--lr-total-rounds and --lr-min only apply to --lr-schedule "
                              "cosine; add --lr-schedule cosine or drop them")
        if total is not None and total <= self.lr_warmup_rounds:
            raise ConfigError(f"lr_total_rounds ({total}) must exceed lr_warmup_rounds "
                              f"({self.lr_warmup_rounds}): cosine anneals after the warmup")

    @property
    def learning_rate(self) -> float:
        """The base learning rate used: ``lr``, or ``default_lr(optimizer)`` when it is None."""
        return default_lr(self.optimizer) if self.lr is None else self.lr

    @property
    def out_dir(self) -> Path:
        """The output folder used: ``out``, or ``default_out(model, data)`` when it is None
        (``dataset`` in place of ``data`` when it is given)."""
        source = self.data if self.dataset is None else self.dataset
        return Path(default_out(self.model, source) if self.out is None else self.out)

    @property
    def storage_dir(self) -> Path:
        """Where the shard replicas keep their Raft logs: ``<out>/raft``, absolute (resolved
        in the driver's working directory). Holds nothing but this job's groups; a fresh
        run clears it, a clean finish deletes it unless ``keep_raft_log``."""
        return self.out_dir.resolve() / "raft"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready copy of every field (for summary.json), with ``lr`` and ``out`` the
        values used (``learning_rate``, ``out_dir``)."""
        values = asdict(self)
        values["lr"] = self.learning_rate
        values["out"] = str(self.out_dir)
        return values


def check_log_to(log_to: object) -> tuple[str, ...]:
    """``log_to`` as used: ``jsonl`` first, then each other name once, in the order given
    (a single string is one name); raises ``ConfigError`` naming the allowed values."""
    names = [log_to] if isinstance(log_to, str) else log_to
    if not isinstance(names, (tuple, list)):
        raise ConfigError(f"log_to must be a tuple of tracker names ({', '.join(TRACKERS)}), "
                          f"got {log_to!r}; e.g. log_to=('tensorboard',)")
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"log_to: unknown tracker {name!r}; choose from "
                              f"{', '.join(TRACKERS)} (e.g. --log-to tensorboard)")
    return tuple(dict.fromkeys(["jsonl", *names]))


def default_lr(optimizer: str) -> float:
    """The learning rate when none is given, for the CLI and the API alike: ``ADAM_LR``
    for adam/adamw, ``SGD_LR`` for sgd/momentum."""
    return ADAM_LR if optimizer in ("adam", "adamw") else SGD_LR


def default_out(model: str, data: str) -> str:
    """The output folder when none is given, for the CLI and the API alike:
    ``runs/<model>-<data>``, with characters other than letters, digits, ``_.-`` replaced
    by ``_`` (``runs/cnn-digits``; ``bench.models:mlp6m`` on ``synthetic:8x3`` gives
    ``runs/bench.models_mlp6m-synthetic_8x3``)."""
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{data}")
