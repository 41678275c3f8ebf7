"""What --metrics-listen costs: `kvraft bench` on a 3-node `kvraft cluster`, metrics off and on.

Each round starts a fresh cluster (fsync on, loopback) with ``--no-metrics``
or with metrics on every node and a scraper fetching each node's
``/metrics`` once a second (as a Prometheus with a 1 s interval would), runs
``kvraft bench --clients 64 --duration 8 --workload put``, and stops the
cluster. Rounds alternate off/on so a drift in the machine's load hits both.
Besides the bench's throughput and latency, each round records the CPU
seconds the three node processes used during the bench (from /proc), which
contention from other work on the machine disturbs less than throughput.
Results: ``benchmarks/results/metrics.json``, one JSON line per round on stdout.

    .venv/bin/python benchmarks/metrics_bench.py [--rounds 2] [--modes off,on,unscraped]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
KVRAFT = [sys.executable, "-m", "kvraft"]


def wait_leader(servers: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = subprocess.run(
            [*KVRAFT, "status", "--json", "--servers", servers], capture_output=True, text=True
        )
        if status.returncode == 0:
            rows = json.loads(status.stdout)
            if all(r.get("reachable") for r in rows) and any(
                r.get("role") == "leader" for r in rows
            ):
                return
        time.sleep(0.2)
    raise TimeoutError("no leader")


def node_cpu_s(cluster_pid: int) -> float:
    """User + system CPU seconds of the cluster's node processes so far (Linux /proc)."""
    children = Path(f"/proc/{cluster_pid}/task/{cluster_pid}/children").read_text().split()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def scrape_loop(urls: list[str], stop: threading.Event, counts: list[int]) -> None:
    """Fetch every URL once a second until ``stop``; counts[0] scrapes, counts[1] bytes."""
    while not stop.wait(1.0):
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:
                counts[1] += len(response.read())
            counts[0] += 1


def one_round(mode: str, args: argparse.Namespace, base_port: int) -> dict[str, Any]:
    """``mode``: off (--no-metrics), on (metrics, scraped once a second), unscraped."""
    metrics = mode != "off"
    with tempfile.TemporaryDirectory(prefix="kvraft-metrics-bench-") as tmp:
        cmd = [*KVRAFT, "--log-level", "warning", "cluster", "--data-dir", f"{tmp}/data"]
        cmd += ["--base-port", str(base_port)]
        if not metrics:
            cmd.append("--no-metrics")
        cluster = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        servers = ",".join(f"127.0.0.1:{base_port + i}" for i in range(3))
        stop, counts = threading.Event(), [0, 0]
        try:
            wait_leader(servers)
            scraper = None
            if mode == "on":
                urls = [f"http://127.0.0.1:{base_port + 100 + i}/metrics" for i in range(3)]
                scraper = threading.Thread(target=scrape_loop, args=(urls, stop, counts))
                scraper.start()
            out = Path(tmp) / "bench.json"
            cpu_before = node_cpu_s(cluster.pid)
            bench = [*KVRAFT, "bench", "--servers", servers, "--clients", str(args.clients)]
            bench += ["--duration", str(args.duration), "--workload", "put", "--json", str(out)]
            subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
            cpu_s = node_cpu_s(cluster.pid) - cpu_before
            stop.set()
            if scraper is not None:
                scraper.join()
            result = json.loads(out.read_text())
        finally:
            stop.set()
            os.killpg(cluster.pid, signal.SIGINT)
            cluster.wait(30)
    ops = result["results"]["put"]["ops"]
    return {
        "mode": mode,
        "scrapes": counts[0],
        "scraped_bytes": counts[1],
        # Over warm-up and measured part alike, so per op it slightly overstates.
        "node_cpu_s": cpu_s,
        "node_cpu_us_per_op": cpu_s / ops * 1e6,
        "bench": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--base-port", type=int, default=17601)
    parser.add_argument(
        "--modes", default="off,on", help="the order within a round: off, on, unscraped"
    )
    args = parser.parse_args()
    rounds = []
    for r in range(args.rounds):
        for mode in args.modes.split(","):
            result = one_round(mode, args, args.base_port)
            rounds.append(result)
            print(json.dumps({"round": r, **result}), flush=True)
    loads = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    doc = {"args": vars(args), "loadavg_after": loads, "rounds": rounds}
    (RESULTS / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
