"""Shard plan: tiling, splitting of large tensors, balance, determinism, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from paramserver import PlanError, ShardPlan
from paramserver.plan import AUTO_SHARD_BYTES, auto_shards, count_pieces
from paramserver.server_config import DEFAULT_SPLIT_BYTES, ServerConfig

SHAPES = {"fc1.weight": (512, 784), "fc1.bias": (512,), "fc2.weight": (10, 512),
          "fc2.bias": (10,), "scale": ()}


def _full(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def test_large_tensor_is_split_into_row_slices_across_shards() -> None:
    plan = ShardPlan.build(SHAPES, 3, split_bytes=512 * 1024)
    slices = [p for s in range(3) for p in plan.pieces(s) if p.tensor == "fc1.weight"]
    assert len(slices) >= 4 and all(not p.whole for p in slices)
    assert all(p.key == f"fc1.weight#{p.start}:{p.stop}" for p in slices)
    assert all(p.nbytes <= 512 * 1024 for p in slices)
    assert len({s for s in range(3) for p in plan.pieces(s) if p.tensor == "fc1.weight"}) == 3


def test_small_tensors_stay_whole() -> None:
    plan = ShardPlan.build(SHAPES, 2)
    keys = sorted(p.key for s in range(2) for p in plan.pieces(s))
    assert keys == sorted(SHAPES)


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 20])
def test_split_then_join_is_identity(shards: int) -> None:
    plan = ShardPlan.build(SHAPES, shards, split_bytes=100_000)
    full = _full()
    parts = plan.split(full)
    assert len(parts) == shards
    joined = plan.join(parts)
    for name, value in full.items():
        np.testing.assert_array_equal(joined[name], value)


def test_more_shards_than_tensors_gives_empty_shards() -> None:
    plan = ShardPlan.build({"a": (3,), "b": (4,)}, 5)
    sizes = [len(plan.pieces(s)) for s in range(5)]
    assert sorted(sizes) == [0, 0, 0, 1, 1]
    assert plan.join(plan.split({"a": np.ones(3), "b": np.zeros(4)}))["a"].tolist() == [1, 1, 1]


def test_greedy_balancing_keeps_shards_within_one_piece() -> None:
    shapes = {f"t{i}": (i + 1, 64) for i in range(40)}
    plan = ShardPlan.build(shapes, 4)
    loads = [sum(p.nbytes for p in plan.pieces(s)) for s in range(4)]
    biggest = max(p.nbytes for s in range(4) for p in plan.pieces(s))
    assert max(loads) - min(loads) <= biggest


def test_plan_is_deterministic_and_insertion_order_free() -> None:
    a = ShardPlan.build(SHAPES, 3, split_bytes=200_000)
    b = ShardPlan.build(dict(reversed(list(SHAPES.items()))), 3, split_bytes=200_000)
    assert a.layout() == b.layout()
    assert a.to_json() == b.to_json()


def test_pieces_sorted_and_layout_is_plain_data() -> None:
    plan = ShardPlan.build(SHAPES, 2, split_bytes=200_000)
    for s in range(2):
        keys = [p.key for p in plan.pieces(s)]
        assert keys == sorted(keys)
        assert plan.layout()[s] == [(p.key, p.tensor, p.start, p.stop) for p in plan.pieces(s)]


def test_json_round_trip_and_table() -> None:
    plan = ShardPlan.build(SHAPES, 3, split_bytes=200_000)
    again = ShardPlan.from_json(plan.to_json())
    assert again == plan and again.layout() == plan.layout()
    table = plan.table()
    assert "shard 2:" in table and "fc2.weight" in table and "MB" in table


def test_split_rejects_wrong_tensors() -> None:
    plan = ShardPlan.build(SHAPES, 2)
    full = _full()
    del full["fc2.bias"]
    with pytest.raises(PlanError, match="missing"):
        plan.split(full)
    full = _full()
    full["fc1.bias"] = np.zeros(3, np.float32)
    with pytest.raises(PlanError, match="shape"):
        plan.split(full)


NON_TILING = '{"shapes": {"a": [4]}, "shards": [[["a", "a", 0, 3, [3]]]]}'


@pytest.mark.parametrize("text", ["{", NON_TILING])
def test_from_json_rejects_malformed_or_non_tiling(text: str) -> None:
    with pytest.raises(PlanError):
        ShardPlan.from_json(text)


def test_build_rejects_bad_arguments() -> None:
    with pytest.raises(PlanError):
        ShardPlan.build(SHAPES, 0)
    with pytest.raises(PlanError):
        ShardPlan.build({}, 2)
    assert issubclass(PlanError, ValueError)


def gpt2_small_shapes() -> dict[str, tuple[int, ...]]:
    """GPT-2 small's parameter shapes (124.4M float32 parameters, 498 MB)."""
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (50257, 768), "wpe.weight": (1024, 768),
                                          "ln_f.weight": (768,), "ln_f.bias": (768,)}
    for i in range(12):
        for name, shape in {"ln_1.weight": (768,), "ln_1.bias": (768,),
                            "attn.c_attn.weight": (768, 2304), "attn.c_attn.bias": (2304,),
                            "attn.c_proj.weight": (768, 768), "attn.c_proj.bias": (768,),
                            "ln_2.weight": (768,), "ln_2.bias": (768,),
                            "mlp.c_fc.weight": (768, 3072), "mlp.c_fc.bias": (3072,),
                            "mlp.c_proj.weight": (3072, 768), "mlp.c_proj.bias": (768,)}.items():
            shapes[f"h.{i}.{name}"] = shape
    return shapes


GPT2 = gpt2_small_shapes()
GPT2_BYTES = 4 * sum(int(np.prod(s)) for s in GPT2.values())


def test_a_124m_model_is_balanced_and_round_trips() -> None:
    """With the server's default split size every shard of GPT-2 small is within 10 % of
    the mean (the 154 MB embedding is cut by rows), and split + join gives the tensors back."""
    assert 124e6 < GPT2_BYTES / 4 < 125e6
    assert ServerConfig(job="j").split_bytes == DEFAULT_SPLIT_BYTES
    full = {name: np.arange(i, i + int(np.prod(shape)), dtype=np.float32).reshape(shape)
            for i, (name, shape) in enumerate(sorted(GPT2.items()))}  # distinct per tensor
    for shards in (2, 4):
        plan = ShardPlan.build(GPT2, shards, split_bytes=DEFAULT_SPLIT_BYTES)
        loads = [sum(p.nbytes for p in plan.pieces(s)) for s in range(shards)]
        assert sum(loads) == GPT2_BYTES
        assert all(abs(load / (GPT2_BYTES / shards) - 1) <= 0.10 for load in loads), loads
        assert ShardPlan.build(dict(reversed(GPT2.items())), shards,
                               split_bytes=DEFAULT_SPLIT_BYTES) == plan
        joined = plan.join(plan.split(full))
        assert joined.keys() == full.keys()
        assert all(np.array_equal(joined[name], value) for name, value in full.items())
        del joined


def test_count_pieces_is_the_plans_piece_count() -> None:
    for split in (100_000, 512 * 1024, DEFAULT_SPLIT_BYTES):
        plan = ShardPlan.build(SHAPES, 3, split_bytes=split)
        assert count_pieces(SHAPES, split) == sum(len(plan.pieces(s)) for s in range(3))
    assert count_pieces(SHAPES, DEFAULT_SPLIT_BYTES) == len(SHAPES)
    with pytest.raises(PlanError):
        count_pieces(SHAPES, 0)


def test_auto_shards_follows_state_bytes_cpus_and_pieces() -> None:
    assert auto_shards(300_000, 2, cpus=16, replicas=3) == 1  # the default cnn: one shard
    assert auto_shards(0, 1, cpus=16, replicas=3) == 1
    # GPT-2 small with Adam: 1.49 GB of state wants 6 shards of <= 256 MiB ...
    assert auto_shards(GPT2_BYTES, 3, cpus=64, replicas=3) == 6
    assert auto_shards(GPT2_BYTES, 1, cpus=64, replicas=3) == 2  # ... SGD: 498 MB
    assert auto_shards(GPT2_BYTES, 3, cpus=16, replicas=3) == 5  # 16 CPUs // 3 replicas
    assert auto_shards(GPT2_BYTES, 3, cpus=2, replicas=3) == 1  # fewer CPUs than replicas
    assert auto_shards(GPT2_BYTES, 3, cpus=64, replicas=3, pieces=4) == 4
    assert auto_shards(AUTO_SHARD_BYTES, 1, cpus=64, replicas=1) == 1
    assert auto_shards(AUTO_SHARD_BYTES + 1, 1, cpus=64, replicas=1) == 2
    for bad in ({"param_bytes": -1}, {"optimizer_state_factor": 0.5}, {"replicas": 0},
                {"cpus": -1}):
        args = {"param_bytes": 1, "optimizer_state_factor": 1, "cpus": 4, "replicas": 1} | bad
        with pytest.raises(PlanError):
            auto_shards(**args)  # type: ignore[arg-type]
