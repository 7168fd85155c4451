"""CLI: ``python -m jobs.train [flags]``. Every user mistake ends in one line on stderr.

Exit 2: the flags are wrong or do not fit together (bad values, a model or loader that is
not there, a model that does not fit the data); exit 1: the job failed (a loader or factory
raised, a round failed, a server error). ``--debug`` (or ``RAFTPS_DEBUG=1``) shows the full
traceback instead.

``jobs.train`` names two things users rely on: this CLI module (``python -m jobs.train``) and
the API function ``jobs.train(config, model=..., data=...)``. Importing a submodule rebinds the
package attribute to the module, so this module is made callable: calling it calls the API.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, NoReturn, cast

from consensus.errors import ConsensusError
from jobs.config import (
    DURABILITIES,
    LR_SCHEDULES,
    MODES,
    NONFINITE_POLICIES,
    OPTIMIZERS,
    TRACKERS,
    TrainConfig,
    default_lr,
)
from jobs.errors import ConfigError, JobsError
from jobs.model_args import ModelArg, parse_model_arg
from paramserver.errors import ParamServerError
from workers.errors import WorkersError

PROG = "python -m jobs.train"
DEBUG_ENV = "RAFTPS_DEBUG"
JOB_ERRORS = (JobsError, WorkersError, ConsensusError, ParamServerError)
"""What a job raises for a reason the user can act on: printed as one line; exit 2 for a
``ConfigError`` (the flags do not fit together), else 1."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` (one line) and exit 2."""
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


def count_or_auto(what: str) -> Callable[[str], int | str]:
    """The argparse type of ``--shards`` / ``--workers``: a count, or ``auto``."""
    def parse(text: str) -> int | str:
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {what} count or 'auto', got {text!r}") from None
    return parse


def checkpoint_count(text: str) -> int | None:
    """``--keep-checkpoints``: a count, or ``all`` (None; see ``TrainConfig``)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of checkpoints or 'all', got {text!r}") from None


def model_arg(text: str) -> tuple[str, ModelArg]:
    """``--model-arg key=value`` (``jobs.model_args.parse_model_arg``)."""
    try:
        return parse_model_arg(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class ModelArgsAction(argparse.Action):
    """Collects repeated ``--model-arg key=value`` into one dict; a key given twice is an
    error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        """Add one ``(key, value)`` pair to the namespace's dict (a copy: never the default)."""
        key, value = cast(tuple[str, ModelArg], values)  # model_arg's pair
        current = dict(getattr(namespace, self.dest) or {})
        if key in current:
            raise argparse.ArgumentError(self, f"{key} is given twice")
        current[key] = value
        setattr(namespace, self.dest, current)


class LogToAction(argparse.Action):
    """Collects repeated ``--log-to NAME`` into a tuple; the first one given replaces the
    default rather than adding to it (``TrainConfig.log_to`` keeps ``jsonl`` in any case)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        """Add one tracker name to the namespace's tuple."""
        current = getattr(namespace, self.dest)
        given = () if current is self.default else tuple(current)
        setattr(namespace, self.dest, (*given, str(values)))


def build_parser() -> OneLineParser:
    """The CLI's flags. Every default is ``TrainConfig``'s (``--lr`` and ``--out`` too:
    None, resolved by ``TrainConfig.learning_rate`` / ``out_dir``). Each flag's ``dest`` is
    the ``TrainConfig`` field it sets, except ``--debug`` (the CLI's own)."""
    p = OneLineParser(prog=PROG,
                      description="Train a model with a Raft-replicated parameter server.")
    _job_flags(p, TrainConfig())
    _optimizer_flags(p, TrainConfig())
    _server_flags(p, TrainConfig())
    return p


def _job_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument("--model", default=d.model, help="mlp | cnn | package.module:factory")
    p.add_argument("--model-arg", dest="model_kwargs", type=model_arg, action=ModelArgsAction,
                   default=d.model_kwargs, metavar="KEY=VALUE",
                   help="keyword argument of the model factory (repeatable); VALUE is read "
                        "as a JSON scalar when it parses as one, else as a string")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=d.data,
                        help="digits | synthetic[:FxC[xTRAIN[xTEST]]] | package.module:loader")
    source.add_argument("--dataset", default=d.dataset, metavar="npy:DIR|package.module:name",
                        help="a dataset the gradient tasks read by index instead of --data: "
                             "npy:DIR (x_train.npy, y_train.npy, x_test.npy, y_test.npy, "
                             "memory-mapped) or package.module:name (a callable returning "
                             "{'train': ds, 'test': ds}: map-style datasets or ray.data "
                             "Datasets)")
    p.add_argument("--loss", default=d.loss,
                   help="cross_entropy | mse | package.module:fn (fn(outputs, targets) -> "
                        "per-sample losses, shape (b,))")
    p.add_argument("--metric", default=d.metric,
                   help="accuracy | none | package.module:fn (per-sample values); default: "
                        "accuracy for cross_entropy, none otherwise (the test evaluation "
                        "then reports the mean loss)")
    p.add_argument("--workers", type=count_or_auto("worker"), default=d.workers, metavar="N|auto",
                   help="gradient tasks per round, or 'auto' (with --micro-batches): one per "
                        "cluster CPU (GPU slot with --gpu) each round, up to M, as nodes "
                        "join and leave; the bits stay the same")
    p.add_argument("--mode", choices=MODES, default=d.mode)
    p.add_argument("--staleness", type=int, default=d.staleness, help="ssp bound (ssp only)")
    p.add_argument("--backup-workers", type=int, default=d.backup_workers)
    p.add_argument("--straggler-timeout", type=float, default=d.straggler_timeout,
                   help="seconds before a round closes without its stragglers")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--micro-batches", type=int, default=d.micro_batches, metavar="M",
                   help="cut each global batch into M micro-batches summed by one fixed "
                        "tree: the same model bits for any --workers <= M")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="output folder (default runs/<model>-<data>)")
    p.add_argument("--resume", action="store_true", default=d.resume,
                   help="continue from the latest checkpoint under --out/checkpoints")
    p.add_argument("--overwrite", action="store_true", default=d.overwrite,
                   help="let a fresh run replace the results of an earlier run in --out")
    p.add_argument("--keep-checkpoints", type=checkpoint_count, default=d.keep_checkpoints,
                   metavar="K|all", help=f"checkpoints to keep, newest first (default "
                                         f"{d.keep_checkpoints}; 'all' keeps every one)")
    p.add_argument("--gpu", type=float, nargs="?", const=1.0, default=d.gpu,
                   help="GPUs per gradient task (fractional ok; bare --gpu means 1)")
    p.add_argument("--wait-for-gpus", action=argparse.BooleanOptionalAction,
                   default=d.wait_for_gpus,
                   help="--gpu on a cluster without GPUs yet: have the autoscaler add them "
                        "and wait, or run on the CPU (default: wait if an autoscaler runs)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-rounds", type=int, default=d.max_rounds,
                   help="stop after this many rounds")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=d.timeout_s,
                   metavar="SECONDS",
                   help=f"seconds any single wait of the driver may block (default "
                        f"{d.timeout_s:g})")
    p.add_argument("--address", default=d.address,
                   help="Ray address (default RAY_ADDRESS or local)")
    p.add_argument("--job", default=d.job, help="job name (actor name prefix)")
    p.add_argument("--log-to", dest="log_to", choices=TRACKERS, action=LogToAction,
                   default=d.log_to, metavar="|".join(TRACKERS),
                   help="also send the config and each round's metrics to tensorboard "
                        "(<out>/tensorboard) or mlflow (MLFLOW_TRACKING_URI, else "
                        "<out>/mlruns; experiment: --job); repeatable; metrics.jsonl (jsonl) "
                        "is always written")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", default=d.pipeline,
                   help="sync: start a round only after the previous one committed everywhere")
    p.add_argument("--debug", action="store_true", default=False,
                   help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def _optimizer_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"base learning rate (default {default_lr('sgd'):g} for sgd/momentum, "
                        f"{default_lr('adam'):g} for adam/adamw)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="learning rate by round: constant, step (x --lr-gamma every "
                        "--lr-step-size rounds) or cosine (down to --lr-min)")
    p.add_argument("--lr-warmup-rounds", type=int, default=d.lr_warmup_rounds, metavar="W",
                   help="linear warmup over the first W rounds (any schedule)")
    p.add_argument("--lr-step-size", type=int, default=d.lr_step_size, metavar="ROUNDS",
                   help="step: rounds between decays")
    p.add_argument("--lr-gamma", type=float, default=d.lr_gamma,
                   help="step: decay factor in (0, 1]")
    p.add_argument("--lr-total-rounds", type=int, default=d.lr_total_rounds, metavar="ROUNDS",
                   help="cosine: the round the rate reaches --lr-min (default: the run's rounds)")
    p.add_argument("--lr-min", type=float, default=d.lr_min,
                   help="cosine: the final learning rate")
    p.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm, metavar="X",
                   help="scale each worker's mean gradient to global L2 norm <= X before it "
                        "is sent (default: no clipping)")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help="momentum of --optimizer momentum, in [0, 1)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov,
                   help="Nesterov momentum (--optimizer momentum only)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 (sgd/momentum/adam) or decoupled (adamw) weight decay")
    p.add_argument("--nonfinite-policy", choices=NONFINITE_POLICIES,
                   default=d.nonfinite_policy,
                   help="a NaN/inf gradient stops the job (error) or skips its round")


def _server_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument("--shards", type=count_or_auto("shard"), default=d.shards, metavar="N|auto",
                   help="parameter shards, or 'auto' (from the model size and cluster CPUs)")
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--durability", choices=DURABILITIES, default=d.durability,
                   help="Raft log: fsync every entry (disk) or a majority in memory (memory)")
    p.add_argument("--keep-raft-log", action=argparse.BooleanOptionalAction,
                   default=d.keep_raft_log,
                   help="keep <out>/raft after a clean finish (a failed run always keeps it)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build and validate the TrainConfig; raises ``ConfigError`` on bad combinations."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values)


def check_names(config: TrainConfig) -> None:
    """Fail before Ray starts when a flag names something that is not there: the model or
    the loader (``--model``/``--data``: imported, not called; ``--dataset``: an npy
    directory's headers read, a callable imported; the factory's signature must
    take the ``--model-arg`` keywords), the loss or the metric (``--loss``/``--metric``)
    or, with ``--resume``, a checkpoint under ``--out``; and without ``--resume`` or
    ``--overwrite``, an ``--out`` holding an earlier run's results (``jobs.outputs``).
    Raises ``ConfigError``; changes nothing."""
    from jobs.backend import RaftServerBackend
    from jobs.outputs import check_out
    from workers.data import resolve_data
    from workers.datasets import resolve_dataset
    from workers.models import check_model_spec
    from workers.objective import resolve_objective

    try:
        check_model_spec(config.model, config.model_kwargs)
        if config.dataset is None:
            resolve_data(config.data)
        else:
            resolve_dataset(config.dataset)
        resolve_objective(config.loss, config.metric)
    except WorkersError as exc:
        raise ConfigError(str(exc)) from exc
    if config.resume and RaftServerBackend().latest_checkpoint(config.out_dir) is None:
        raise ConfigError(f"--resume found no checkpoint under {config.out_dir}/checkpoints; "
                          "drop --resume to start fresh, or point --out at an earlier run")
    check_out(config)


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse flags into a TrainConfig; invalid flags/combinations (including a model, loader
    or resume checkpoint that is not there) exit 2 with one line."""
    return _parse(argv)[0]


def debug_requested(flag: bool) -> bool:
    """``--debug`` was given or ``RAFTPS_DEBUG`` is set (to anything but empty or 0)."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _parse(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """The config and whether to show tracebacks; bad flags exit 2 (raise with debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    if args.dataset is not None and any(a == "--data" or a.startswith("--data=")
                                        for a in given):
        parser.error("argument --dataset: not allowed with argument --data")  # even its default
    debug = debug_requested(args.debug)
    try:
        config = config_from_args(args)
        check_names(config)
    except ConfigError as exc:
        if debug:
            raise
        parser.error(str(exc))
    return config, debug


def error_line(exc: BaseException, prog: str = PROG) -> str:
    """``python -m jobs.train: error: Type: message`` on one line (``prog``: the CLI). An
    error a Ray task or actor raised is named as itself, without Ray's wrapper and remote
    traceback."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    message = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{prog}: error: {name}: {message}" if message else f"{prog}: error: {name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: train, print where the outputs are. A model that does not fit the data
    exits 2, a job error (data, model, training, server) 1, each with one line on stderr."""
    config, debug = _parse(argv)
    from jobs.api import train

    try:
        result = train(config)
    except JOB_ERRORS as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    from workers.objective import score_name

    print(f"test {score_name(config.loss, config.metric)} {result.final_test_accuracy:.4f} "
          f"after {result.rounds} rounds in {result.wall_s:.1f} s; outputs in "
          f"{result.out_dir}")
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as ``jobs.api.train`` (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from jobs.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
