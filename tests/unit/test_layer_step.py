"""``step_layers`` steps big layers in flat chunks on a pool: the bits equal the whole-layer
step of ``optimizer_step`` for every optimizer, state kind and layout, and the pool's threads
run torch's kernels single-threaded."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from paramserver import layer_step
from paramserver.layer_step import step_layers
from paramserver.optim import OptimizerConfig, new_state, optimizer_step

CONFIGS = [
    OptimizerConfig(kind="adam", lr=0.01),
    OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01),
    OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.1),
    OptimizerConfig(kind="sgd", lr=0.05),
    OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, nesterov=True),
]
SHAPES = {"w": (67, 300), "v": (20_011,), "b": (300,)}  # w and v chunked at 4096


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4096 elements from layers of 1024: layers of a few chunks and a ragged
    last one, at test sizes."""
    monkeypatch.setattr(layer_step, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(layer_step, "POOL_MIN_ELEMENTS", 1024)
    if layer_step.STEP_WORKERS < 2:
        monkeypatch.setattr(layer_step, "STEP_WORKERS", 2)


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _reference(params: dict[str, np.ndarray], grads: list[dict[str, np.ndarray]], samples: int,
               cfg: OptimizerConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each layer stepped whole, one round after the other."""
    params = {k: v.copy() for k, v in params.items()}
    state: dict[str, Any] = {k: new_state(cfg) for k in params}
    for round_grads in grads:
        for key in params:
            mean = np.divide(round_grads[key], np.float32(samples))
            optimizer_step(params[key], mean, state[key], cfg.lr, cfg)
    return params, state


def _frozen(arrays: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in arrays.items():
        value = np.array(value, copy=True)
        value.flags.writeable = False
        out[key] = value
    return out


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.kind}-m{c.momentum}-wd{c.weight_decay}")
@pytest.mark.parametrize("frozen", [False, True], ids=["writable", "frozen"])
def test_chunked_rounds_have_the_whole_layer_bits(cfg: OptimizerConfig, frozen: bool) -> None:
    start = _arrays(0)
    grads = [_arrays(10 + r) for r in range(4)]
    want_params, want_state = _reference(start, grads, 3, cfg)
    params = {k: v.copy() for k, v in start.items()}
    opt: dict[str, Any] = {k: new_state(cfg) for k in params}
    for round_grads in grads:
        if frozen:  # handed-out state: copied on write, never changed
            params = _frozen(params)
            opt = {k: _frozen(s) for k, s in opt.items()}
            before = ({k: v.copy() for k, v in params.items()},
                      {k: {n: b.copy() for n, b in s.items()} for k, s in opt.items()})
        given = (params, opt)
        params, opt = step_layers(params, opt, list(SHAPES), _frozen(round_grads), 3, cfg.lr,
                                  cfg)
        if frozen:
            for key in SHAPES:
                assert np.array_equal(given[0][key], before[0][key])
                for name, buf in before[1][key].items():
                    assert np.array_equal(given[1][key][name], buf)
    for key in SHAPES:
        assert params[key].shape == SHAPES[key]
        assert np.array_equal(params[key], want_params[key]), key
        assert set(opt[key]) == set(want_state[key])
        for name, value in want_state[key].items():
            assert opt[key][name].shape == np.shape(value)
            assert np.array_equal(opt[key][name], value), (key, name)


@pytest.mark.parametrize("cfg", CONFIGS[:3] + CONFIGS[4:5], ids=lambda c: c.kind)
def test_a_step_without_kept_state_gives_the_same_parameters_and_changes_no_input(
        cfg: OptimizerConfig) -> None:
    start, grads = _arrays(1), [_arrays(20 + r) for r in range(2)]
    want, _ = _reference(start, grads, 5, cfg)
    params, opt = step_layers({k: v.copy() for k, v in start.items()},
                              {k: new_state(cfg) for k in start}, list(SHAPES), grads[0], 5,
                              cfg.lr, cfg)
    params, opt = _frozen(params), {k: _frozen(s) for k, s in opt.items()}
    kept = {k: {n: b.copy() for n, b in s.items()} for k, s in opt.items()}
    lean, dropped = step_layers(params, opt, list(SHAPES), grads[1], 5, cfg.lr, cfg,
                                keep_state=False)
    assert dropped == {k: {} for k in SHAPES}
    for key in SHAPES:
        assert np.array_equal(lean[key], want[key]), key
        for name, buf in kept[key].items():
            assert np.array_equal(opt[key][name], buf)


def test_fresh_adam_state_without_kept_state_starts_from_zeros() -> None:
    cfg = OptimizerConfig(kind="adam", lr=0.01)
    start, grads = _arrays(2), [_arrays(30)]
    want, _ = _reference(start, grads, 2, cfg)
    lean, _ = step_layers(_frozen(start), {k: new_state(cfg) for k in start}, list(SHAPES),
                          grads[0], 2, cfg.lr, cfg, keep_state=False)
    for key in SHAPES:
        assert np.array_equal(lean[key], want[key]), key


def test_the_pool_threads_run_the_kernels_single_threaded() -> None:
    seen: list[tuple[str, int]] = []
    real = layer_step._step_chunk

    def spy(*args: Any) -> None:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        real(*args)

    main_threads = torch.get_num_threads()
    cfg = CONFIGS[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layer_step, "_step_chunk", spy)
        step_layers(_arrays(3), {k: new_state(cfg) for k in SHAPES}, list(SHAPES), _arrays(4),
                    1, cfg.lr, cfg)
    chunks = sum(-(-int(np.prod(s)) // 4096) for k, s in SHAPES.items() if k != "b")
    assert len(seen) == chunks
    assert all(name.startswith("shard-step") and threads == 1 for name, threads in seen)
    assert torch.get_num_threads() == main_threads  # the caller's setting is its own
