"""A forward's randomness is a function of (seed, round, rank): the same in any process and
after any history, and it leaves the process's own torch generator as it was."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import torch
from torch import nn

from workers.forward_rng import forward_seed, seeded_forward
from workers.gradient import TaskSpec, compute_gradients
from workers.models import ModelSpec

MASK_SCRIPT = """
import sys, torch
from workers.forward_rng import seeded_forward
torch.manual_seed(int(sys.argv[1]))
torch.rand(int(sys.argv[2]))  # some history of the process's generator
with seeded_forward(3, 5, 1):
    mask = torch.nn.functional.dropout(torch.ones(64), 0.5)
sys.stdout.write(''.join('1' if v else '0' for v in (mask > 0).tolist()))
"""


def _mask(seed: int, round: int, rank: int) -> torch.Tensor:
    with seeded_forward(seed, round, rank):
        return nn.functional.dropout(torch.ones(64), 0.5) > 0


def test_the_seed_is_the_documented_function_of_seed_round_and_rank() -> None:
    digest = hashlib.sha256(b"raftps-forward:3:5:1").digest()
    assert forward_seed(3, 5, 1) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    assert len({forward_seed(3, r, k) for r in range(4) for k in range(4)}) == 16


def test_the_same_key_gives_the_same_mask_after_any_history() -> None:
    first = _mask(3, 5, 1)
    torch.manual_seed(99)
    torch.rand(1000)
    assert torch.equal(_mask(3, 5, 1), first)
    assert not torch.equal(_mask(3, 6, 1), first)
    assert not torch.equal(_mask(3, 5, 2), first)


def test_another_process_with_another_history_draws_the_same_mask() -> None:
    here = "".join("1" if v else "0" for v in _mask(3, 5, 1).tolist())
    there = subprocess.run([sys.executable, "-c", MASK_SCRIPT, "17", "333"], check=True,
                           capture_output=True, text=True, timeout=120).stdout
    assert there == here


def test_seeding_a_forward_leaves_the_process_generator_as_it_was() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    _mask(1, 2, 3)
    assert torch.equal(torch.get_rng_state(), before)


def dropout_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3))


SPEC = ModelSpec(factory=dropout_model, key="tests.unit.test_dropout_rng:dropout_model")


def test_a_dropout_gradient_depends_on_round_and_rank_only() -> None:
    from workers.models import build_model, initial_parameters

    params = initial_parameters(build_model(SPEC, 2))
    layout = (tuple((k, k, 0, v.shape[0]) for k, v in sorted(params.items())),)
    shards = [params]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    spec = TaskSpec(model=SPEC, seed=2, layout=layout)

    def grads(round: int, rank: int) -> dict[str, np.ndarray]:
        out, _ = compute_gradients(spec, x, y, np.arange(8), shards, round_index=round,
                                   rank=rank)
        return out[0][1]

    first = grads(4, 1)
    torch.manual_seed(1234)  # another history of this process's generator
    torch.rand(77)
    grads(0, 0)
    again = grads(4, 1)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    other = grads(4, 0)
    assert not all(np.array_equal(first[k], other[k]) for k in first)
