"""Read-index gets against gets through the log, paired: same cluster, same window.

One fresh 3-node cluster (fsync on, loopback, peers authenticated). For each
repetition and each load (1 and 64 gets in flight) it runs ``kvraft bench
--workload get`` twice back to back, once per read mode, the mode that goes
first alternating between repetitions, so a drift in the machine's load hits
both modes alike. Each run records throughput, p50/p99 latency and the CPU
microseconds per get of the client (this process) and of the three nodes.

    .venv/bin/python benchmarks/reads_bench.py [--reps 3] [--duration 5]

Results: ``benchmarks/results/reads.json``; a Markdown table on stdout, with
the medians over the repetitions and the index/log ratio of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from run import LocalCluster, bench  # benchmarks/run.py

from kvraft.bench import BenchConfig

RESULTS = Path(__file__).parent / "results"
LOADS = (1, 64)
MODES = ("log", "index")


def one_run(cluster: LocalCluster, clients: int, read: str, duration_s: float) -> dict[str, Any]:
    config = BenchConfig(
        servers=tuple(cluster.addresses),
        clients=clients,
        duration_s=duration_s,
        warmup_s=1.0,
        workload="get",
        read=read,  # type: ignore[arg-type]
        keys=1000,
    )
    return bench(cluster, config)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| in flight | read | gets/s | p50 ms | p99 ms | client CPU µs/get | nodes CPU µs/get |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians: dict[tuple[int, str], dict[str, float]] = {}
    for clients in LOADS:
        for read in MODES:
            mine = [r for r in runs if r["clients"] == clients and r["read"] == read]
            med = {
                key: statistics.median(r[key] for r in mine if r[key] is not None)
                for key in (
                    "ops_per_s",
                    "p50_ms",
                    "p99_ms",
                    "client_cpu_us_per_op",
                    "nodes_cpu_us_per_op",
                )
            }
            medians[clients, read] = med
            lines.append(
                f"| {clients} | {read} | {med['ops_per_s']:,.0f} | {med['p50_ms']:.2f} | "
                f"{med['p99_ms']:.2f} | {med['client_cpu_us_per_op']:,.0f} | "
                f"{med['nodes_cpu_us_per_op']:,.0f} |"
            )
    lines.append("")
    lines.append("| in flight | gets/s index/log | p50 index/log | nodes CPU index/log |")
    lines.append("| ---: | ---: | ---: | ---: |")
    for clients in LOADS:
        log, index = medians[clients, "log"], medians[clients, "index"]
        lines.append(
            f"| {clients} | {index['ops_per_s'] / log['ops_per_s']:.2f} | "
            f"{index['p50_ms'] / log['p50_ms']:.2f} | "
            f"{index['nodes_cpu_us_per_op'] / log['nodes_cpu_us_per_op']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "reads.json")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kvraft-reads-") as tmp:
        cluster = LocalCluster(Path(tmp))
        cluster.start()
        try:
            cluster.wait_for_leader()
            for rep in range(args.reps):
                for clients in LOADS:
                    order = MODES if rep % 2 == 0 else MODES[::-1]
                    for read in order:
                        summary = one_run(cluster, clients, read, args.duration)
                        row = {"rep": rep, "clients": clients, "read": read, **summary}
                        runs.append(row)
                        print(json.dumps(row), file=sys.stderr)
        finally:
            cluster.stop()
    report = {
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "reps": args.reps,
        "duration_s": args.duration,
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
