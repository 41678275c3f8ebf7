"""The pure parts of ``kvraft bench`` and ``benchmarks/run.py``: statistics, keys, tables."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kvraft.bench import (
    BenchConfig,
    BenchResult,
    OpStats,
    _Keys,
    failover_time_s,
    format_result,
    percentile,
    result_json,
)

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_summary_reports_throughput_over_the_window_and_percentiles_in_ms() -> None:
    stats = OpStats(latencies_s=[0.001 * v for v in range(1, 101)])
    stats.errors["Maybe"] += 2
    s = stats.summary(window_s=2.0)
    assert s["ops"] == 100 and s["ops_per_s"] == 50
    assert (s["p50_ms"], s["p99_ms"], s["max_ms"]) == pytest.approx((50, 99, 100))
    assert s["errors"] == {"Maybe": 2}
    assert OpStats().summary(1.0)["p50_ms"] is None


def test_puts_in_flight_never_share_a_key() -> None:
    """Each put in flight owns its key, so concurrent puts of the benchmark never conflict."""
    keys = _Keys("bench/t", 10, random.Random(1))
    held = {keys.take() for _ in range(10)}
    assert held == set(range(10)) and keys.free == []
    keys.give_back(3)
    assert keys.take() == 3


def test_failover_counts_only_operations_started_after_the_kill() -> None:
    timeline = [
        ("put", 0.0, 1.001),  # sent before the kill: its reply may come from the dead leader
        ("put", 1.05, 1.40),
        ("put", 1.10, 1.30),  # the first success of a put sent after the kill
        ("get", 1.02, 1.05),
    ]
    assert failover_time_s(timeline, kill_time=1.0) == pytest.approx(0.30)
    assert failover_time_s(timeline[:1], kill_time=1.0) is None


def test_config_refuses_fewer_keys_than_clients_for_puts() -> None:
    with pytest.raises(ValueError, match="puts need one each"):
        BenchConfig(servers=("127.0.0.1:1",), clients=8, keys=4, workload="mixed")
    BenchConfig(servers=("127.0.0.1:1",), clients=8, keys=4, workload="get")


def test_table_and_json_of_a_mixed_run() -> None:
    config = BenchConfig(servers=("127.0.0.1:1",), clients=2, duration_s=1.0, workload="mixed")
    result = BenchResult(
        config,
        1.0,
        {"get": OpStats([0.001, 0.002]), "put": OpStats([0.003])},
        client_cpu_s_per_op=50e-6,
    )
    lines = format_result(result).splitlines()
    assert lines[0].startswith("kvraft bench: mixed, 2 clients in flight")
    assert [line.split()[0] for line in lines[2:5]] == ["get", "put", "all"]
    assert lines[4].split()[1:3] == ["3", "3"]  # all: 3 ops, 3 ops/s
    assert lines[-1] == "client CPU: 50 us per operation"
    data = result_json(result)
    assert data["results"]["all"]["ops"] == 3 and data["config"]["servers"] == ["127.0.0.1:1"]


def _load_run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvraft_bench_run", ROOT / "benchmarks/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_standard_set_table_is_the_median_of_the_repetitions() -> None:
    run = _load_run_py()

    def rep(scale: float) -> list[object]:
        def s(ops: float, p50: float) -> dict[str, object]:
            return {"ops_per_s": ops * scale, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50,
                    "max_ms": p50, "errors": {}}  # fmt: skip

        runs = [run.Run("sequential put", 1, s(900, 1.1))]
        runs += [run.Run("put", n, s(1000 * n, 2.0)) for n in run.PUT_IN_FLIGHT]
        runs.append(run.Run("get", 64, s(12000, 3.0)))
        runs.append(run.Run("failover", 64, {**s(5000, 4.0), "failover_s": 0.3 * scale}))
        return runs

    rows = run.medians([rep(1.0), rep(3.0), rep(2.0)])
    put256 = next(r for r in rows if r["name"] == "put" and r["in_flight"] == 256)
    assert put256["ops_per_s"] == 512_000 and put256["ops_per_s_runs"] == [256e3, 768e3, 512e3]
    env = {"command": "x", "date": "d", "commit": "c", "cpus": 2, "cpu": "cpu", "python": "3",
           "loop": "uvloop", "repeats": 3, "duration_s": 5.0, "warmup_s": 1.0,
           "load_before": "0", "load_after": "0"}  # fmt: skip
    text = run.markdown(rows, env)
    assert "| put | 256 | 512,000 |" in text
    assert "median **0.600 s**" in text
    targets = {k: met for k, _, _, met in run.target_rows(rows)}
    assert targets == {
        "put_256_ops_per_s": True,
        "sequential_put_p50_ms": False,
        "get_64_ops_per_s": True,
        "failover_s": False,
    }
