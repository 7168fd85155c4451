"""Training on a dataset read by index: the same bits as the in-memory path, and a dataset
larger than the driver's memory budget trains while the driver stays small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import ray
from numpy.lib.format import open_memmap

from jobs import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 512
TRAIN_ROWS = 1 << 20  # x 512 float32 features = 2 GiB
TEST_ROWS = 2048
CHUNK = 1 << 14
DRIVER_RSS_LIMIT = 500 << 20


def small_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    return x[:480], y[:480], x[480:], y[480:]


def config(out: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = {"model": "mlp", "workers": 2, "shards": 2, "replicas": 1,
                               "epochs": 2, "global_batch": 32, "optimizer": "adam",
                               "lr": 0.01, "checkpoint_every": 0, "progress": False,
                               "out": str(out)}
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_in_memory_and_npy_sources_train_the_same_bits(ray_session: None,
                                                        tmp_path: Path) -> None:
    data = tmp_path / "npy"
    data.mkdir()
    for name, arr in zip(("x_train", "y_train", "x_test", "y_test"), small_arrays(),
                         strict=True):
        np.save(data / f"{name}.npy", arr)
    in_memory = train(config(tmp_path / "mem"), data=small_arrays)
    by_index = train(config(tmp_path / "npy-run", dataset=f"npy:{data}"))
    assert in_memory.rounds == by_index.rounds == 30
    assert in_memory.model_path.read_bytes() == by_index.model_path.read_bytes()
    assert in_memory.final_test_accuracy == by_index.final_test_accuracy


def write_big_dataset(root: Path) -> None:
    """2 GiB of training rows written chunk by chunk: row i is ``(i + j) % 997 / 997`` in
    column j, its label whether row i's first value is above one half."""
    root.mkdir()
    for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        x = open_memmap(root / f"x_{split}.npy", mode="w+", dtype=np.float32,
                        shape=(rows, FEATURES))
        y = open_memmap(root / f"y_{split}.npy", mode="w+", dtype=np.int64, shape=(rows,))
        for start in range(0, rows, CHUNK):
            ids = np.arange(start, min(start + CHUNK, rows), dtype=np.int64)
            x[start:start + len(ids)] = ((ids[:, None] + np.arange(FEATURES)) % 997) / 997
            y[start:start + len(ids)] = (ids % 997) > 498
        x.flush()
        y.flush()
        del x, y


WRITER = """
import sys
from pathlib import Path
from tests.integration.test_dataset_e2e import write_big_dataset
write_big_dataset(Path(sys.argv[1]))
"""
DRIVER = """
import json, sys
from jobs.train import main
code = main(sys.argv[1:])
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_rss": peak}))
"""
"""The driver's process, started anew (``VmHWM`` is this process's own high-water mark;
``getrusage``'s ``ru_maxrss`` would carry its parent's across ``exec``)."""


def test_a_2gb_memory_mapped_dataset_trains_with_a_small_driver(ray_session: None,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "big"
    # written by a process of its own: the pages it writes count in that one's memory only
    subprocess.run([sys.executable, "-c", WRITER, str(root)], cwd=ROOT, check=True,
                   timeout=240)
    assert (root / "x_train.npy").stat().st_size >= 2 << 30
    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, "--model", "mlp", "--dataset", f"npy:{root}",
         "--workers", "2", "--shards", "1", "--replicas", "1", "--global-batch", "64",
         "--epochs", "1", "--max-rounds", "6", "--checkpoint-every", "0",
         "--address", address, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["config"]["dataset"] == f"npy:{root}"
    assert report["peak_rss"] < DRIVER_RSS_LIMIT, f"driver peak RSS {report['peak_rss']:,} B"
