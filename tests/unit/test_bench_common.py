"""Unit tests of bench.common: statistics, ratios, tables, interleaving, steady-state rates."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from bench.common import (
    PRODUCT_LOGGERS,
    child_env,
    format_number,
    interleave,
    interleaved_order,
    last_json_object,
    log_driver_to,
    markdown_table,
    median,
    percentile,
    ratio,
    steady_state_rate,
    write_results,
)


def test_median_odd_even_and_empty() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))


def test_percentile_interpolates_linearly() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 25) == 20.0
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert math.isnan(percentile([], 50))


def test_ratio_is_nan_without_a_usable_reference() -> None:
    assert ratio(30.0, 10.0) == 3.0
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(1.0, float("nan")))


def test_markdown_table_formats_numbers_and_nan() -> None:
    table = markdown_table(["side", "rate", "x"], [["a", 12345.678, 0.5], ["b", float("nan"), 2]])
    assert table.splitlines() == [
        "| side | rate | x |",
        "|---|---|---|",
        "| a | 12,346 | 0.50 |",
        "| b | - | 2 |",
    ]
    assert format_number(99.999) == "100.00"


def test_interleaved_order_alternates_sides_per_repeat() -> None:
    assert interleaved_order(["A", "B", "C"], 2) == [
        (0, "A"), (0, "B"), (0, "C"), (1, "A"), (1, "B"), (1, "C")]
    assert interleaved_order(["A"], 0) == []


def test_interleave_runs_in_order_and_survives_a_failing_side() -> None:
    calls: list[str] = []
    count = {"b": 0}

    def run_a() -> float:
        calls.append("A")
        return 1.0

    def run_b() -> float:
        calls.append("B")
        count["b"] += 1
        if count["b"] == 1:
            raise RuntimeError("first B fails")
        return 2.0

    results = interleave({"A": run_a, "B": run_b}, 3)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert results == {"A": [1.0, 1.0, 1.0], "B": [2.0, 2.0]}


def test_steady_state_rate_skips_warmup_rounds() -> None:
    # round 0 is a slow start-up round: 2048 samples in 2 s; later rounds 2048 in 0.1 s / 0.3 s
    records = [{"round": 0, "samples": 2048, "samples_per_s": 1024.0},
               {"round": 1, "samples": 2048, "samples_per_s": 20480.0},
               {"round": 2, "samples": 2048, "samples_per_s": 2048 / 0.3}]
    assert steady_state_rate(records, 1) == pytest.approx(4096 / 0.4)
    assert steady_state_rate(records, 0) == pytest.approx(6144 / 2.4)


def test_steady_state_rate_rejects_nothing_to_measure() -> None:
    records = [{"round": 0, "samples": 10, "samples_per_s": 5.0}]
    with pytest.raises(ValueError, match="none left"):
        steady_state_rate(records, 1)
    with pytest.raises(ValueError, match=r"samples_per_s=0\.0"):
        steady_state_rate([{"round": 3, "samples": 10, "samples_per_s": 0.0}], 0)


def test_child_env_drops_thread_caps_and_ray_address_only() -> None:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_ADDRESS": "auto",
           "PATH": "/bin", "HOME": "/root"}
    assert child_env(env) == {"PATH": "/bin", "HOME": "/root"}
    assert env["OMP_NUM_THREADS"] == "1"  # the input is not mutated


def test_last_json_object_ignores_log_noise() -> None:
    text = "INFO starting ray\n{not json\n" + json.dumps({"samples_per_s": 1.5}) + "\nbye\n"
    assert last_json_object(text) == {"samples_per_s": 1.5}
    with pytest.raises(ValueError, match="no JSON object"):
        last_json_object("[1, 2]\nplain text\n")


def test_write_results_adds_machine_record(tmp_path: Path) -> None:
    path = write_results("demo", {"side": {"samples_per_s": 1.0}}, directory=tmp_path)
    data = json.loads(path.read_text())
    assert path == tmp_path / "demo.json"
    assert data["side"] == {"samples_per_s": 1.0}
    assert {"python", "cpu_count", "measured_at"} <= set(data["_machine"])


def test_the_driver_log_gets_the_products_info_records(tmp_path: Path) -> None:
    loggers = [logging.getLogger(n) for n in PRODUCT_LOGGERS]
    saved = [(lg.level, list(lg.handlers)) for lg in loggers]
    try:
        path = log_driver_to(tmp_path / "run")
        logging.getLogger("jobs.pipeline").info("recovered in %.2f s", 0.13)
        logging.getLogger("consensus.node").debug("not at INFO")
        logging.getLogger("elsewhere").warning("not the product's")
        text = path.read_text()
        assert path == tmp_path / "run" / "driver.log"
        assert "INFO jobs.pipeline: recovered in 0.13 s" in text
        assert "not at INFO" not in text and "not the product's" not in text
    finally:
        for lg, (level, handlers) in zip(loggers, saved, strict=True):
            for handler in set(lg.handlers) - set(handlers):
                lg.removeHandler(handler)
                handler.close()
            lg.setLevel(level)
