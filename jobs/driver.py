"""The driver: sets a job up, runs its rounds (``RoundEngine``), evaluates, checkpoints, writes.

Lifecycle (a small state machine): LOAD data and model (bad input raises here, before the
output folder is touched) → START the server (fresh, or restored from the latest checkpoint)
→ TRAIN rounds, evaluating (and healing replicas that lost their disk) at each epoch end and
checkpointing every ``checkpoint_every`` rounds; rounds lost with a node that cannot be
completed in place (``RoundsLostError``) continue from the last checkpoint → FINISH: a final
checkpoint, model.safetensors, summary.json, curves.png → CLEAN UP: the server is shut down and
its Raft logs (``config.storage_dir``, ``<out>/raft``, on every node) are deleted, unless
``keep_raft_log``. On any error the server is shut down, the last checkpoint is left as it was
and the Raft logs are kept. ``--resume`` needs only ``<out>/checkpoints`` (see
``TrainConfig.resume``), so deleting the logs of a finished job loses nothing it needs.
``shards="auto"`` is resolved between START's two steps, once the model is built and Ray is
up (``resolve_shards``). The experiment trackers of ``log_to`` (``jobs.tracking``) open once
the output folder is prepared, before Ray starts; they get the config once ``shards`` is
resolved and each round's metrics.jsonl record, and are closed when ``run`` returns or raises.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from safetensors.torch import save_file

from consensus.atomic_file import write_atomic, write_with
from consensus.memory_log import remove_storage_tree
from jobs.backend import ParameterServerLike, RaftServerBackend, ServerBackend
from jobs.config import TrainConfig
from jobs.errors import ResumeError, RoundsLostError
from jobs.metrics import MetricsLog, read_metrics
from jobs.optimizer_settings import optimizer_config, with_schedule_rounds
from jobs.plots import plot_curves
from jobs.progress import EpochProgress
from jobs.raft_storage import fresh_incarnation, read_incarnation, resumed_incarnation
from jobs.resume_point import LogsVerdict, round_from_logs
from jobs.round_result import RoundResult
from jobs.rounds import RoundEngine
from jobs.task_spec import job_objective, task_spec
from jobs.tracking import Trackers, open_trackers
from workers.data import DataLoader, Dataset, load
from workers.datasets import DatasetSpec, OpenedDataset, open_dataset
from workers.datasets.source import is_npy
from workers.model_state import full_state_dict, model_state
from workers.models import ModelFactory, ModelSpec, build_model, resolve_model
from workers.objective import Objective
from workers.schedule import BatchSchedule

LOG = logging.getLogger(__name__)


def _incarnation_of(checkpoint: Path) -> str | None:
    """The storage incarnation ``checkpoint`` records; None if none or its manifest is
    corrupt (the restore then falls back to an older checkpoint, and says so)."""
    from paramserver.checkpoint import checkpoint_incarnation
    from paramserver.errors import CheckpointCorruptError

    try:
        return checkpoint_incarnation(checkpoint)
    except CheckpointCorruptError:
        return None
_RESTORES = 3  # times a job continues from its last checkpoint after rounds were lost


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a finished (or budget-stopped) job produced."""

    out_dir: Path
    model_path: Path
    final_test_accuracy: float
    rounds: int
    samples_per_s: float
    wall_s: float
    state_dict: dict[str, np.ndarray]


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start an embedded Ray; no-op if connected."""
    if not ray.is_initialized():
        # "local" starts an embedded Ray even if another process left a cluster running.
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local",
                 log_to_driver=True)


def usable_gpu(config: TrainConfig) -> TrainConfig:
    """``config`` with the GPUs its gradient tasks get (``jobs.gpus.use_gpus``): as asked
    when the cluster has them; on a cluster without, the autoscaler is asked for them and
    the job waits, or, when nothing can add a GPU, ``gpu=0`` with a warning (tasks asking
    for a GPU would otherwise never be scheduled)."""
    from jobs.gpus import use_gpus

    return use_gpus(config)


def cluster_cpus() -> int:
    """CPUs of the connected Ray cluster (all nodes)."""
    return int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]


def checkpoint_shards(checkpoint: Path) -> int | None:
    """The shard count a checkpoint was cut for (its manifest's plan), or None if unreadable."""
    try:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        return len(manifest["plan"]["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_shards(config: TrainConfig, initial: Mapping[str, np.ndarray],
                   latest: Path | None) -> TrainConfig:
    """``config`` with ``shards="auto"`` replaced by a count: the checkpoint's when resuming,
    else ``paramserver.plan.auto_shards`` of the model's float32 bytes, its optimizer state,
    the cluster's CPUs and the pieces the plan can cut. Needs Ray up. A count is kept."""
    if config.shards != "auto":
        return config
    from paramserver.plan import FLOAT32_BYTES, auto_shards, count_pieces
    from paramserver.server_config import DEFAULT_SPLIT_BYTES

    resumed = checkpoint_shards(latest) if latest is not None else None
    if resumed is not None:
        return replace(config, shards=resumed)
    optimizer = optimizer_config(config)
    slots = len(optimizer.state_names())  # float32 arrays per parameter besides itself
    shapes = {k: tuple(np.shape(v)) for k, v in initial.items()}
    count = auto_shards(sum(FLOAT32_BYTES * int(np.size(v)) for v in initial.values()),
                        1 + slots, cluster_cpus(), config.replicas,
                        pieces=count_pieces(shapes, DEFAULT_SPLIT_BYTES))
    LOG.info("--shards auto: %d shards", count)
    return replace(config, shards=count)


# a stdlib-only function, so a node runs it without importing this module (torch, matplotlib);
# it deletes the shared-memory segment folders of memory-durability replicas too
_remove_tree: Any = ray.remote(num_cpus=0)(remove_storage_tree)


def remove_raft_log(storage: Path, out: Path, timeout_s: float) -> None:
    """Delete a finished job's Raft storage ``storage`` here and on every other live Ray node
    (replicas keep their logs node-locally at the same path). Refuses (a warning) a path
    that is not inside ``out``; a node that does not answer within ``timeout_s`` is warned
    about and left."""
    if not storage.resolve().is_relative_to(out.resolve()):
        LOG.warning("not deleting Raft storage %s: it is outside %s", storage, out)
        return
    remove_storage_tree(str(storage))
    if not ray.is_initialized():
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    refs = [_remove_tree.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(str(storage), ignore_errors=True)
            for node in nodes if node["Alive"] and node["NodeID"] != here]
    if not refs:
        return
    try:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    except ray.exceptions.RayError as exc:  # a node died meanwhile: its disk went with it
        LOG.warning("deleting %s on the other nodes: %s", storage, exc)
        return
    if pending:
        LOG.warning("%s is still on %d node(s) that did not answer in %.0f s; delete it there",
                    storage, len(pending), timeout_s)


def evaluate(model: torch.nn.Module, state: Mapping[str, np.ndarray],
             data: Dataset | OpenedDataset, objective: Objective | None = None) -> float:
    """The test score of ``model`` with the parameters and buffers ``state`` (loaded
    strictly into ``model``: ModelFactoryError when it lacks a tensor of the model): the
    mean of ``objective``'s metric (by default cross-entropy's accuracy), or without a
    metric the mean loss (``jobs.evaluation.Evaluation.score``)."""
    from jobs.evaluation import evaluate_model  # shared with python -m jobs.evaluate

    return evaluate_model(model, state, data, objective).score


class Driver:
    """One training job. ``backend`` makes the server (default: the Raft parameter server)."""

    def __init__(self, config: TrainConfig, *, model: ModelFactory | None = None,
                 data: DataLoader | None = None, backend: ServerBackend | None = None,
                 dataset: DatasetSpec | OpenedDataset | None = None) -> None:
        self.config = config
        self.data_spec = data if data is not None else config.data
        self.dataset_spec = dataset if dataset is not None else config.dataset
        """A dataset addressed by index (``workers.datasets``), used instead of the data
        loader when given: the tasks read it themselves, the driver only by index."""
        self.model_spec_in = model if model is not None else config.model
        self.backend = backend if backend is not None else RaftServerBackend()
        self.out = config.out_dir
        self.ckpt_dir = self.out / "checkpoints"
        self.failovers = 0  # rounds recovered after a lost replica/leader/node, so far
        self.shards_auto = config.shards == "auto"
        """``shards="auto"`` was asked for; ``run`` replaces ``config`` with the count used."""
        self.trackers = Trackers([])
        """The job's experiment trackers besides metrics.jsonl (``jobs.tracking``), opened by
        ``run`` once the output folder is ready, closed when it returns or raises."""

    def run(self) -> TrainResult:
        """Train to the end (or ``max_rounds``); blocks; returns the result. See module doc."""
        cfg = self.config
        t_start = time.perf_counter()
        data = self._open_data()
        spec = resolve_model(self.model_spec_in, in_features=data.in_features,
                             num_classes=data.num_classes, model_kwargs=cfg.model_kwargs)
        model = build_model(spec, cfg.seed)
        schedule = BatchSchedule(seed=cfg.seed, global_batch=cfg.global_batch,
                                 n_train=data.n_train)
        end = cfg.epochs * schedule.batches_per_epoch
        if cfg.max_rounds is not None:
            end = min(end, cfg.max_rounds)
        self.config = cfg = with_schedule_rounds(cfg, schedule.batches_per_epoch)
        latest = self._prepare_out()
        self.trackers = open_trackers(cfg, resume=cfg.resume)
        try:
            result = self._serve(spec, model, data, schedule, latest, end, t_start)
        except BaseException:
            self.trackers.close(failed=True)
            raise
        self.trackers.close()
        return result

    def _open_data(self) -> Dataset | OpenedDataset:
        """LOAD the data: the loader's arrays, or the dataset spec opened (Ray is connected
        first unless it is an npy directory: the spec may hold a ray.data dataset)."""
        source = self.dataset_spec
        if source is None:
            return load(self.data_spec)
        if isinstance(source, OpenedDataset):
            return source
        if not is_npy(source):
            ensure_ray(self.config.address)
        return open_dataset(source)

    def _serve(self, spec: ModelSpec, model: torch.nn.Module, data: Dataset | OpenedDataset,
               schedule: BatchSchedule, latest: Path | None, end: int,
               t_start: float) -> TrainResult:
        """START, TRAIN, FINISH and CLEAN UP (see the module doc), from ``latest`` if any."""
        cfg = self.config
        ensure_ray(cfg.address)
        if not cfg.resume or cfg.durability == "memory":
            # A new history (jobs.raft_storage): clear older runs' logs on every node and
            # draw a new incarnation. A resumed memory-durability job starts fresh too: its
            # checkpoint is its durable state (after a power loss every replica would come
            # back flagged).
            remove_raft_log(cfg.storage_dir, self.out, cfg.timeout_s)
            fresh_incarnation(cfg.storage_dir)
        else:
            resumed_incarnation(cfg.storage_dir,
                                None if latest is None else _incarnation_of(latest))
        initial = model_state(model)  # parameters and buffers
        self.config = cfg = resolve_shards(cfg, initial, latest)
        self.trackers.log_config(cfg.to_dict())
        server = self.backend.create(cfg, initial)
        del initial  # the shards hold version 0 now: a large model's copy is not kept here
        try:
            start = self._resume_at(server, latest) if cfg.resume else 0
            train_s, samples = self._train_restoring(server, spec, model, data, schedule,
                                                     start, end)
            result = self._finish(server, model, data, end, train_s, samples, t_start)
        except BaseException:
            server.shutdown()  # the Raft logs stay, for diagnosis
            raise
        server.shutdown()
        if not cfg.keep_raft_log:
            remove_raft_log(cfg.storage_dir, self.out, cfg.timeout_s)
        return result

    def _train_restoring(self, server: ParameterServerLike, spec: ModelSpec,
                         model: torch.nn.Module, data: Dataset | OpenedDataset,
                         schedule: BatchSchedule, start: int, end: int) -> tuple[float, int]:
        """``_train``; rounds lost with a node continue from the last checkpoint (a few
        times)."""
        for attempt in range(_RESTORES + 1):
            try:
                return self._train(server, spec, model, data, schedule, start, end)
            except RoundsLostError as exc:
                latest = self.backend.latest_checkpoint(self.out)
                if latest is None or attempt == _RESTORES:
                    raise
                LOG.warning("%s; restoring %s", exc, latest)
                start = self._restore(server, latest)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _resume_at(self, server: ParameterServerLike, latest: Path | None) -> int:
        """RESUME: the round to continue at, from the shards' reloaded Raft logs when they
        agree, else from ``latest`` restored (``jobs.resume_point``); says which in one
        line on stderr. ``ResumeError`` when neither is there."""
        cfg = self.config
        from paramserver.checkpoint import checkpoint_round

        ckpt_round = None if latest is None else checkpoint_round(latest)
        if cfg.durability == "disk":
            verdict = round_from_logs(
                server.shard_versions(), checkpoint_round=ckpt_round,
                versions_per_round=cfg.max_workers if cfg.mode == "async" else 1)
        else:
            verdict = LogsVerdict(None, "durability=memory keeps no log across a restart")
        if verdict.round is not None:
            line = f"resuming at round {verdict.round} from the Raft logs ({verdict.why})"
            start = verdict.round
        elif latest is None:
            raise ResumeError(f"--resume cannot continue: {verdict.why} and there is no "
                              f"checkpoint under {self.ckpt_dir}; drop --resume to start fresh")
        else:
            start = self._restore(server, latest)
            line = f"resuming at round {start} from checkpoint round-{start} ({verdict.why})"
        LOG.info(line)
        print(line, file=sys.stderr, flush=True)
        return start

    def _restore(self, server: ParameterServerLike, checkpoint: Path) -> int:
        """``server.restore(checkpoint)``, falling back to the next older checkpoint while
        one is corrupt (each fallback is said on stderr and logged, naming the corrupt file
        and why); returns the round restored. The oldest one's error is raised as it is."""
        from paramserver.checkpoint import previous_checkpoint
        from paramserver.errors import CheckpointCorruptError

        while True:
            try:
                return server.restore(checkpoint)
            except CheckpointCorruptError as exc:
                older = previous_checkpoint(self.out, checkpoint)
                if older is None:
                    raise
                message = (f"checkpoint {checkpoint.name} is corrupt ({exc.path}: {exc.detail});"
                           f" resuming from the previous one, {older.name}")
                LOG.warning(message)
                print(message, file=sys.stderr)
                checkpoint = older

    def _has_raft_log(self) -> bool:
        """A resumable Raft log is recorded: ``durability="disk"``, an incarnation under
        the storage dir, and a fixed shard count (no checkpoint records an ``auto`` one)."""
        return (self.config.durability == "disk" and self.config.shards != "auto"
                and read_incarnation(self.config.storage_dir) is not None)

    def _prepare_out(self) -> Path | None:
        """Resume: find the latest checkpoint. Fresh: refuse an ``out`` holding an earlier
        run's results unless ``overwrite`` (``OutputExistsError``, nothing touched), then
        clear old results, checkpoints and Raft state."""
        if self.config.resume:
            latest = self.backend.latest_checkpoint(self.out)
            if latest is None and self._has_raft_log():
                return None  # the shards' logs alone (jobs.resume_point)
            if latest is None:
                raise ResumeError(f"--resume found no checkpoint under {self.ckpt_dir}; "
                                  "drop --resume to start fresh")
            return latest
        from jobs.outputs import check_out, clear_results

        check_out(self.config)
        if self.config.overwrite:
            clear_results(self.out)
        for stale in (self.ckpt_dir, self.config.storage_dir):
            if stale.exists():
                LOG.warning("fresh run: removing %s from an earlier run", stale)
                remove_storage_tree(str(stale), ignore_errors=False)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        return None

    def _checkpoint(self, server: ParameterServerLike, round: int) -> Path:
        """``server.checkpoint`` at ``round``; once it is written (durably), prune the older
        ones to ``keep_checkpoints`` (never the newest, nor this one)."""
        path = server.checkpoint(self.out, round)
        if self.config.keep_checkpoints is not None:
            from paramserver.checkpoint import prune_checkpoints

            for old in prune_checkpoints(self.out, self.config.keep_checkpoints, protect=path):
                LOG.info("removed checkpoint %s (--keep-checkpoints %d)", old,
                         self.config.keep_checkpoints)
        return path

    def _train(self, server: ParameterServerLike, spec: ModelSpec, model: torch.nn.Module,
               data: Dataset | OpenedDataset, schedule: BatchSchedule, start: int,
               end: int) -> tuple[float, int]:
        cfg = usable_gpu(self.config)
        per_epoch = schedule.batches_per_epoch
        task = task_spec(cfg, spec, server.layout)
        y_ref: Any = None
        if isinstance(data, Dataset):  # in memory: the arrays go to the object store once
            x_ref: Any = ray.put(data.x_train)
            y_ref = ray.put(data.y_train)
        else:  # by index: each task opens the dataset from this handle, reads its indices
            x_ref = ray.put(data.task_data)
        engine = RoundEngine(config=cfg, server=server, spec=task, schedule=schedule,
                             x_ref=x_ref, y_ref=y_ref)
        log = MetricsLog(self.out / "metrics.jsonl", start_round=start)
        progress = EpochProgress(epochs=cfg.epochs, rounds_per_epoch=per_epoch,
                                 enabled=cfg.progress)
        samples = 0

        def on_round(result: RoundResult) -> None:
            nonlocal samples
            samples += result.samples
            self.failovers = max(self.failovers, result.failovers)
            epoch = result.round // per_epoch
            done = result.round + 1
            acc = None
            if done % per_epoch == 0:
                acc = evaluate(model, server.state_dict(), data, task.objective)
                server.heal()  # at the epoch barrier: replace replicas that lost their disk
            record = log.append(result, epoch=epoch, test_accuracy=acc)
            self.trackers.log_round(result.round, record)  # the same record, every tracker
            progress.round_done(epoch, result.loss_sum / max(result.samples, 1),
                                result.samples, result.wall_s, sum(result.leader_changes))
            if acc is not None:
                progress.epoch_done(epoch, acc)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < end:
                self._checkpoint(server, done)

        t0 = time.perf_counter()
        engine.run(start, end, on_round)
        return time.perf_counter() - t0, samples

    def _finish(self, server: ParameterServerLike, model: torch.nn.Module,
                data: Dataset | OpenedDataset,
                end: int, train_s: float, samples: int, t_start: float) -> TrainResult:
        self._checkpoint(server, end)
        state = server.state_dict()
        accuracy = evaluate(model, state, data, job_objective(self.config))
        full = full_state_dict(model, state)  # every state_dict key, buffers included
        model_path = self.out / "model.safetensors"
        tensors = {k: t.contiguous() for k, t in full.items()}
        write_with(model_path, lambda tmp: save_file(tensors, str(tmp)))  # atomic, durable
        records = read_metrics(self.out / "metrics.jsonl")
        plot_curves(records, self.out / "curves.png")
        wall_s = time.perf_counter() - t_start
        rate = samples / train_s if train_s > 0 else 0.0
        summary = {"final_test_accuracy": accuracy, "rounds": end, "samples_per_s": rate,
                   "wall_s": wall_s, "shards_auto": self.shards_auto,
                   "leader_changes": server.leader_changes(),
                   "replicas": server.replica_stats(),
                   "failovers": self.failovers,
                   "config": self.config.to_dict()}
        write_atomic(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return TrainResult(out_dir=self.out, model_path=model_path,
                           final_test_accuracy=accuracy, rounds=end, samples_per_s=rate,
                           wall_s=wall_s, state_dict={k: np.array(v) for k, v in state.items()})
