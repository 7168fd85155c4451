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
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NoReturn

from consensus.errors import ConsensusError
from jobs.config import (
    DURABILITIES,
    MODES,
    NONFINITE_POLICIES,
    OPTIMIZERS,
    TrainConfig,
    default_lr,
)
from jobs.errors import ConfigError, JobsError
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


def shard_count(text: str) -> int | str:
    """``--shards``: a count, or ``auto`` (see ``TrainConfig.shards``)."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a shard count or 'auto', got {text!r}") from None


def build_parser() -> OneLineParser:
    """The CLI's flags. Every default is ``TrainConfig``'s, except ``--out`` (runs/<model>-
    <data>) and ``--lr`` without a value for adam/adamw (``default_lr``). Each flag's ``dest``
    is the ``TrainConfig`` field it sets, except ``--debug`` (the CLI's own)."""
    p = OneLineParser(prog=PROG,
                      description="Train a model with a Raft-replicated parameter server.")
    _job_flags(p, TrainConfig())
    _optimizer_flags(p, TrainConfig())
    _server_flags(p, TrainConfig())
    return p


def _job_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument("--model", default=d.model, help="mlp | cnn | package.module:factory")
    p.add_argument("--data", default=d.data, help="digits | synthetic[:FxC[xN]] | pkg.mod:loader")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--mode", choices=MODES, default=d.mode)
    p.add_argument("--staleness", type=int, default=d.staleness, help="ssp bound (ssp only)")
    p.add_argument("--backup-workers", type=int, default=d.backup_workers)
    p.add_argument("--straggler-timeout", type=float, default=d.straggler_timeout,
                   help="seconds before a round closes without its stragglers")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="output folder (default runs/<model>-<data>)")
    p.add_argument("--resume", action="store_true", default=d.resume,
                   help="continue from the latest checkpoint under --out/checkpoints")
    p.add_argument("--gpu", type=float, nargs="?", const=1.0, default=d.gpu,
                   help="GPUs per gradient task (fractional ok; bare --gpu means 1)")
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
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", default=d.pipeline,
                   help="sync: start a round only after the previous one committed everywhere")
    p.add_argument("--debug", action="store_true", default=False,
                   help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def _optimizer_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {default_lr('sgd'):g} for sgd/momentum, "
                        f"{default_lr('adam'):g} for adam/adamw)")
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
    p.add_argument("--shards", type=shard_count, default=d.shards, metavar="N|auto",
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
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{args.model}-{args.data}")
    values["out"] = args.out or f"runs/{name}"
    values["lr"] = args.lr if args.lr is not None else default_lr(args.optimizer)
    return TrainConfig(**values)


def check_names(config: TrainConfig) -> None:
    """Fail before Ray starts when a flag names something that is not there: the model or
    the loader (``--model``/``--data``: imported, not called) or, with ``--resume``, a
    checkpoint under ``--out``. Raises ``ConfigError``; changes nothing."""
    from pathlib import Path

    from jobs.backend import RaftServerBackend
    from workers.data import resolve_data
    from workers.models import check_model_spec

    try:
        check_model_spec(config.model)
        resolve_data(config.data)
    except WorkersError as exc:
        raise ConfigError(str(exc)) from exc
    if config.resume and RaftServerBackend().latest_checkpoint(Path(config.out)) is None:
        raise ConfigError(f"--resume found no checkpoint under {config.out}/checkpoints; "
                          "drop --resume to start fresh, or point --out at an earlier run")


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
    debug = debug_requested(args.debug)
    try:
        config = config_from_args(args)
        check_names(config)
    except ConfigError as exc:
        if debug:
            raise
        parser.error(str(exc))
    return config, debug


def error_line(exc: BaseException) -> str:
    """``python -m jobs.train: error: Type: message`` on one line. An error a Ray task or
    actor raised is named as itself, without Ray's wrapper and remote traceback."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    message = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{PROG}: error: {name}: {message}" if message else f"{PROG}: error: {name}"


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
    print(f"test accuracy {result.final_test_accuracy:.4f} after {result.rounds} rounds in "
          f"{result.wall_s:.1f} s; outputs in {result.out_dir}")
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as ``jobs.api.train`` (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from jobs.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
