"""The gradient task's pure core: reassembly of row slices, summed gradients, splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.errors import GradientTaskError
from workers.gradient import TaskSpec, assemble_parameters, compute_gradients
from workers.models import build_model, initial_parameters, resolve_model

SPEC = resolve_model("mlp", in_features=6, num_classes=3)
LAYOUT = (
    (("0.weight#0:100", "0.weight", 0, 100), ("2.weight", "2.weight", 0, 128),
     ("4.bias", "4.bias", 0, 3)),
    (("0.weight#100:256", "0.weight", 100, 256), ("0.bias", "0.bias", 0, 256),
     ("2.bias", "2.bias", 0, 128), ("4.weight", "4.weight", 0, 3)),
)


def shard_dicts(params: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    out = []
    for shard in LAYOUT:
        d = {}
        for key, t, a, b in shard:
            arr = params[t] if key == t else params[t][a:b].copy()
            arr.setflags(write=False)  # like object-store arrays
            d[key] = arr
        out.append(d)
    return out


def test_summed_gradients_match_autograd_and_split_by_layout() -> None:
    params = initial_parameters(build_model(SPEC, seed=1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    idx = np.array([3, 5, 7, 11, 13])
    spec = TaskSpec(model=SPEC, seed=1, layout=LAYOUT)
    grads, info = compute_gradients(spec, x, y, idx, shard_dicts(params))

    ref = build_model(SPEC, seed=1)
    loss = F.cross_entropy(ref(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]),
                           reduction="sum")
    loss.backward()
    expected = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    assert [g[0] for g in grads] == [5, 5]
    np.testing.assert_allclose(grads[0][1]["0.weight#0:100"], expected["0.weight"][:100],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1][1]["0.weight#100:256"], expected["0.weight"][100:],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1][1]["4.weight"], expected["4.weight"], rtol=1e-5)
    assert info["loss_sum"] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert info["samples"] == 5


def test_whole_pieces_are_zero_copy_and_slices_reassemble() -> None:
    params = initial_parameters(build_model(SPEC, seed=0))
    shards = shard_dicts(params)
    full = assemble_parameters(LAYOUT, shards)
    assert full["2.weight"].data_ptr() == shards[0]["2.weight"].ctypes.data
    np.testing.assert_array_equal(full["0.weight"].numpy(), params["0.weight"])


def test_gaps_and_missing_pieces_are_rejected() -> None:
    params = initial_parameters(build_model(SPEC, seed=0))
    shards = shard_dicts(params)
    del shards[1]["0.bias"]
    with pytest.raises(GradientTaskError, match="lack piece"):
        assemble_parameters(LAYOUT, shards)
    gap = ((("0.weight#0:100", "0.weight", 0, 100),),
           (("0.weight#120:256", "0.weight", 120, 256),))
    pieces = [{"0.weight#0:100": params["0.weight"][:100]},
              {"0.weight#120:256": params["0.weight"][120:]}]
    with pytest.raises(GradientTaskError, match="do not tile"):
        assemble_parameters(gap, pieces)
