"""Model factories of ``bench.scale``: ReLU MLPs on 784-feature, 10-class data, by size.

Each factory takes no argument and returns a fresh ``torch.nn.Sequential`` (the contract of
``workers.models``: called right after ``torch.manual_seed``), so the same callable serves
every side of the benchmark: raftps as ``--model bench.models:mlp20m``, the Ray parameter
server and single-process torch by import. ``parameter_count`` gives a size without building
anything (the 124M model is half a gigabyte of float32).

Sizes (weights + biases):

- ``1m``: 784 → 1024 → 256 → 10, 1.07M (smoke runs only);
- ``6m``: 784 → 2048 → 2048 → 10, 5.82M;
- ``20m``: 784 → 4096 → 4096 → 10, 20.0M;
- ``124m``: 784 → 8192 → 8192 → 4096 → 4096 → 10, 123.9M (the GPT-2 small count).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

IN_FEATURES = 784
CLASSES = 10
HIDDEN: dict[str, tuple[int, ...]] = {
    "1m": (1024, 256),
    "6m": (2048, 2048),
    "20m": (4096, 4096),
    "124m": (8192, 8192, 4096, 4096),
}


def widths(hidden: Sequence[int]) -> list[int]:
    """Every layer width, input and output included: ``[784, *hidden, 10]``."""
    return [IN_FEATURES, *hidden, CLASSES]


def parameter_count(hidden: Sequence[int]) -> int:
    """Weights plus biases of the MLP with these hidden widths (nothing is built)."""
    sizes = widths(hidden)
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def mlp(hidden: Sequence[int]) -> nn.Sequential:
    """784 → ``hidden`` … → 10 with ReLU between the linear layers."""
    from torch import nn

    sizes = widths(hidden)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no ReLU after the logits


def mlp1m() -> nn.Sequential:
    """The 1.07M-parameter smoke-test model."""
    return mlp(HIDDEN["1m"])


def mlp6m() -> nn.Sequential:
    """The 5.8M-parameter model: 784 → 2048 → 2048 → 10."""
    return mlp(HIDDEN["6m"])


def mlp20m() -> nn.Sequential:
    """The 20M-parameter model: 784 → 4096 → 4096 → 10."""
    return mlp(HIDDEN["20m"])


def mlp124m() -> nn.Sequential:
    """The 124M-parameter model: 784 → 8192 → 8192 → 4096 → 4096 → 10."""
    return mlp(HIDDEN["124m"])


FACTORIES: dict[str, Callable[[], nn.Sequential]] = {
    "1m": mlp1m, "6m": mlp6m, "20m": mlp20m, "124m": mlp124m}


def factory_spec(size: str) -> str:
    """The ``--model`` spec of ``size`` for ``python -m jobs.train``, e.g. ``bench.models:mlp6m``.

    Raises ``KeyError`` for an unknown size.
    """
    return f"{__name__}:{FACTORIES[size].__name__}"
