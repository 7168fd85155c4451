"""CLI: ``python -m jobs.train [flags]``. Bad flags exit 2 with a one-line reason.

``jobs.train`` names two things users rely on: this CLI module (``python -m jobs.train``) and
the API function ``jobs.train(config, model=..., data=...)``. Importing a submodule rebinds the
package attribute to the module, so this module is made callable: calling it calls the API.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Sequence
from typing import Any, NoReturn

from jobs.config import MODES, OPTIMIZERS, TrainConfig
from jobs.errors import ConfigError, JobsError
from workers.errors import WorkersError

DEFAULT_LR = {"sgd": 0.05, "momentum": 0.05, "adam": 1e-3, "adamw": 1e-3}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` (one line) and exit 2."""
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


def build_parser() -> OneLineParser:
    """The CLI's flags; defaults are the default job (cnn on digits)."""
    d = TrainConfig()
    p = OneLineParser(prog="python -m jobs.train",
                      description="Train a model with a Raft-replicated parameter server.")
    p.add_argument("--model", default=d.model, help="mlp | cnn | package.module:factory")
    p.add_argument("--data", default=d.data, help="digits | synthetic[:FxC[xN]] | pkg.mod:loader")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--shards", type=int, default=d.shards)
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--mode", choices=MODES, default=d.mode)
    p.add_argument("--staleness", type=int, default=d.staleness, help="ssp bound (ssp only)")
    p.add_argument("--backup-workers", type=int, default=d.backup_workers)
    p.add_argument("--straggler-timeout", type=float, default=d.straggler_timeout,
                   help="seconds before a round closes without its stragglers")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 0.05 for sgd/momentum, 0.001 for adam/adamw)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="output folder (default runs/<model>-<data>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--gpu", type=float, nargs="?", const=1.0, default=0.0,
                   help="GPUs per gradient task (fractional ok; bare --gpu means 1)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds")
    p.add_argument("--address", default=None, help="Ray address (default RAY_ADDRESS or local)")
    p.add_argument("--job", default=d.job, help="job name (actor name prefix)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                   help="sync: start a round only after the previous one committed everywhere")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build and validate the TrainConfig; raises ``ConfigError`` on bad combinations."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{args.model}-{args.data}")
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    return TrainConfig(
        model=args.model, data=args.data, workers=args.workers, shards=args.shards,
        replicas=args.replicas, mode=args.mode, staleness=args.staleness,
        backup_workers=args.backup_workers, straggler_timeout=args.straggler_timeout,
        epochs=args.epochs, global_batch=args.global_batch, optimizer=args.optimizer, lr=lr,
        seed=args.seed, out=args.out or f"runs/{name}", resume=args.resume, gpu=args.gpu,
        checkpoint_every=args.checkpoint_every, max_rounds=args.max_rounds,
        address=args.address, job=args.job, pipeline=args.pipeline,
    )


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
        raise ConfigError(str(exc)) from None
    if config.resume and RaftServerBackend().latest_checkpoint(Path(config.out)) is None:
        raise ConfigError(f"--resume found no checkpoint under {config.out}/checkpoints; "
                          "drop --resume to start fresh, or point --out at an earlier run")


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse flags into a TrainConfig; invalid flags/combinations (including a model, loader
    or resume checkpoint that is not there) exit 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        check_names(config)
    except ConfigError as exc:
        parser.error(str(exc))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: train, print where the outputs are; 1 on a training/data error."""
    config = parse_config(argv)
    from jobs.api import train

    try:
        result = train(config)
    except (JobsError, WorkersError) as exc:
        print(f"python -m jobs.train: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
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
