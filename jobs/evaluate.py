"""CLI: ``python -m jobs.evaluate --model M --data D --weights W``: a trained model's test
loss and metric (accuracy by default), computed as the training driver computes them
(``jobs.evaluation``). ``--dataset``, ``--loss`` and ``--metric`` are those of training.

``--weights`` is a ``model.safetensors`` (a torch ``state_dict``, as training or
``python -m jobs.export`` writes it), or a checkpoint: a ``checkpoints/round-<r>/``
folder, or a run's ``--out`` folder (its latest checkpoint). Prints one line, or one JSON
object with ``--json``. Every mistake is one line on stderr: exit 2 for the flags (a model,
loader or weights file that is not there, weights that do not fit the model, a model that
does not fit the data), 1 when the user's loader or factory raised; ``--debug`` (or
``RAFTPS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.evaluation import Evaluation, evaluate_model
from jobs.model_args import ModelArg
from jobs.train import (
    JOB_ERRORS,
    ModelArgsAction,
    OneLineParser,
    debug_requested,
    error_line,
    model_arg,
)
from workers.data import Dataset
from workers.datasets import OpenedDataset
from workers.loss import DEFAULT_LOSS

PROG = "python -m jobs.evaluate"


def build_parser() -> OneLineParser:
    """The CLI's flags; ``--model``, ``--model-arg``, ``--data`` and ``--seed`` as
    ``python -m jobs.train``."""
    d = TrainConfig()
    p = OneLineParser(prog=PROG, description="Evaluate trained weights on a data set's test "
                                             "split: loss and accuracy.")
    p.add_argument("--model", default=d.model, help="mlp | cnn | package.module:factory")
    p.add_argument("--model-arg", dest="model_kwargs", type=model_arg, action=ModelArgsAction,
                   default={}, metavar="KEY=VALUE",
                   help="keyword argument of the model factory (repeatable), as in training")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=d.data,
                        help="digits | synthetic[:FxC[xTRAIN[xTEST]]] | package.module:loader")
    source.add_argument("--dataset", default=None, metavar="npy:DIR|package.module:name",
                        help="a dataset read by index instead of --data, as in training")
    p.add_argument("--loss", default=d.loss,
                   help="cross_entropy | mse | package.module:fn, as in training")
    p.add_argument("--metric", default=d.metric,
                   help="accuracy | none | package.module:fn; default: accuracy for "
                        "cross_entropy, none otherwise")
    p.add_argument("--weights", required=True,
                   help="model.safetensors, a checkpoints/round-<r>/ folder, or a run's --out")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the model's construction (buffers the weights do not hold)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors ``--weights`` names (see the module doc); ``ConfigError`` if it names
    nothing readable."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from paramserver.checkpoint import checkpoint_state_dict, find_checkpoint
    from paramserver.errors import CheckpointCorruptError

    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            raise ConfigError(f"--weights {path} is a folder without a checkpoint; pass a "
                              "model.safetensors, a checkpoints/round-<r>/ folder or a run's "
                              "--out folder")
        try:
            return checkpoint_state_dict(found)
        except CheckpointCorruptError as exc:
            raise ConfigError(f"--weights {path}: {exc}") from exc
    if not path.is_file():
        raise ConfigError(f"--weights {path} does not exist; pass the model.safetensors a "
                          "run wrote (its --out folder holds one)")
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"--weights {path} is not a readable safetensors file: "
                          f"{' '.join(str(exc).split())}") from exc


def check_weights(model: nn.Module, weights: Mapping[str, np.ndarray], *, model_name: str,
                  weights_name: str) -> None:
    """Raise ``ConfigError`` unless ``weights`` fit ``model`` as the driver loads them
    (``workers.model_state.full_state_dict``): every parameter and buffer present, nothing
    the model lacks, every shape the model's."""
    from workers.errors import ModelFactoryError
    from workers.model_state import full_state_dict

    try:
        full = full_state_dict(model, weights)
    except ModelFactoryError as exc:
        raise ConfigError(f"{weights_name} does not fit {model_name}: {exc}") from exc
    own = model.state_dict()
    for name, value in full.items():
        want = tuple(own[name].shape)
        if hasattr(value, "shape") and tuple(value.shape) != want:
            raise ConfigError(f"{weights_name}: {name} has shape {tuple(value.shape)} but "
                              f"{model_name} needs {want}; pass the --model (and --model-arg, "
                              "--data) it was trained with")


def evaluate_weights(model: str, data: str, weights: Path, seed: int = 0,
                     model_kwargs: Mapping[str, ModelArg] | None = None, *,
                     dataset: str | None = None, loss: str = DEFAULT_LOSS,
                     metric: str | None = None) -> Evaluation:
    """Build ``model(**model_kwargs)`` for ``data`` (or ``dataset``, read by index; a spec
    other than ``npy:`` connects to Ray or starts one), checked as ``jobs.train`` checks a
    job with this ``loss`` and ``metric``, load ``weights`` and evaluate them on the test
    split. Raises ``ConfigError`` for a mistake in the flags, the job errors of
    ``jobs.preflight`` otherwise. Writes nothing."""
    from jobs.driver import ensure_ray
    from jobs.preflight import preflight, preflight_dataset, spec_name
    from workers.data import resolve_data
    from workers.datasets import resolve_dataset
    from workers.datasets.source import is_npy
    from workers.errors import WorkersError
    from workers.models import build_model, check_model_spec, resolve_model
    from workers.objective import resolve_objective

    kwargs = dict(model_kwargs or {})
    try:
        check_model_spec(model, kwargs)
        if dataset is None:
            resolve_data(data)
        else:
            resolve_dataset(dataset)
        objective = resolve_objective(loss, metric)
    except WorkersError as exc:
        raise ConfigError(str(exc)) from exc
    state = load_weights(weights)
    source: Dataset | OpenedDataset
    if dataset is None:
        source = preflight(model, data, seed, kwargs, loss=loss, metric=metric).dataset
    else:
        if not is_npy(dataset):
            ensure_ray(None)
        source = preflight_dataset(model, dataset, seed, kwargs, loss=loss, metric=metric)
    spec = resolve_model(model, in_features=source.in_features,
                         num_classes=source.num_classes, model_kwargs=kwargs)
    module = build_model(spec, seed)
    check_weights(module, state, model_name=spec_name("model", model),
                  weights_name=f"--weights {weights}")
    return evaluate_model(module, state, source, objective)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the evaluation (one line, or JSON with ``--json``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_requested(args.debug)
    try:
        result = evaluate_weights(args.model, args.data, Path(args.weights), args.seed,
                                  args.model_kwargs, dataset=args.dataset, loss=args.loss,
                                  metric=args.metric)
    except ConfigError as exc:
        if debug:
            raise
        parser.error(str(exc))
    except JOB_ERRORS as exc:
        if debug:
            raise
        print(error_line(exc, prog=PROG), file=sys.stderr)
        return 1
    source = args.data if args.dataset is None else args.dataset
    if args.json:
        accuracy = None if math.isnan(result.accuracy) else result.accuracy
        print(json.dumps({"loss": result.loss, "accuracy": accuracy,
                          "metric": result.metric_name, "metric_value": result.metric,
                          "samples": result.samples, "weights": args.weights,
                          "model": args.model, "data": source, "loss_fn": args.loss}))
    else:
        score = ("" if result.metric is None
                 else f", {result.metric_name} {result.metric:.4f}")
        print(f"test loss {result.loss:.4f}{score} on {result.samples} samples "
              f"({args.weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
