"""etcd's side of ``memory_bench.py``: the same bulk load of distinct keys into etcd 3.4.

    /tmp/bench-vs-etcd-venv/bin/python benchmarks/etcd_memory_bench.py --keys 1000000

Run it with the side-by-side kit's venv (``../shared/bench-vs-etcd/run.sh`` or
``make bench-quick`` makes it; it has ``aetcd``, etcd's native gRPC client) on
the same machine as ``memory_bench.py``, one after the other, so the figures
compare: a fresh 3-node etcd cluster on loopback (the kit's
``etcd_cluster.sh``: default settings, fdatasync on), ``--keys`` puts of
``--value-size`` bytes to distinct keys, ``--in-flight`` at a time, to the
leader through 4 gRPC channels (the kit's adapter). Reported as
``memory_bench`` reports kvraft: puts/s, median, p99 and longest put, errors,
leader changes (the Raft term's growth over the load), and per node the
resident memory (``VmRSS``, peak ``VmHWM``), RSS per key and the data dir's
disk use. Results go to ``--out``: ``etcd-memory.md`` and ``etcd-memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from memory_bench import du_bytes, proc_status_kib  # benchmarks/ is not a package

KIT = Path(__file__).resolve().parents[2] / "shared" / "bench-vs-etcd"
CHANNELS = 4  # the kit's EtcdGrpc adapter: 4 channels per endpoint
CALL_TIMEOUT_S = 10.0


def etcd_script(kit: Path, base: Path, *args: str) -> str:
    env = {**os.environ, "ETCD_BASE": str(base)}
    out = subprocess.run(
        [str(kit / "etcd_cluster.sh"), *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def endpoint_status(kit: Path, base: Path) -> list[dict[str, Any]]:
    endpoints = etcd_script(kit, base, "endpoints")
    out = subprocess.run(
        ["etcdctl", "--endpoints", endpoints, "endpoint", "status", "-w", "json"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    statuses: list[dict[str, Any]] = json.loads(out.stdout)
    return statuses


async def load(endpoint: str, keys: int, value_size: int, in_flight: int) -> dict[str, Any]:
    import aetcd  # the kit's venv only

    host, port = endpoint.split("//")[-1].rsplit(":", 1)
    clients = [aetcd.Client(host=host, port=int(port), timeout=CALL_TIMEOUT_S) for _ in range(4)]
    for client in clients:
        await client.connect()
    value = b"v" * value_size
    latencies: list[float] = []
    errors = 0
    next_key = 0

    async def worker(n: int) -> None:
        nonlocal next_key, errors
        client = clients[n % len(clients)]
        while next_key < keys:
            key = f"bulk/{next_key:09d}".encode()
            next_key += 1
            started = time.perf_counter()
            try:
                await client.put(key, value)
            except Exception:  # counted, as the kit counts errors
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(in_flight)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.close()
    latencies.sort()
    median = statistics.median(latencies)
    return {
        "puts": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "puts_per_s": len(latencies) / elapsed,
        "median_ms": median * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "longest_ms": latencies[-1] * 1000,
        "longest_over_median": latencies[-1] / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--kit", type=Path, default=KIT, help="the side-by-side kit's directory")
    parser.add_argument("--base", type=Path, default=Path("/tmp/etcd-memory-bench"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if not (args.kit / "etcd_cluster.sh").exists():
        sys.exit(f"no etcd_cluster.sh in {args.kit} (--kit DIR)")

    etcd_script(args.kit, args.base, "start")
    try:
        before = endpoint_status(args.kit, args.base)
        leader_id = before[0]["Status"]["leader"]
        leader = next(
            s["Endpoint"] for s in before if s["Status"]["header"]["member_id"] == leader_id
        )
        term_before = max(s["Status"]["raftTerm"] for s in before)
        figures = asyncio.run(load(leader, args.keys, args.value_size, args.in_flight))
        after = endpoint_status(args.kit, args.base)
        figures["leader_changes"] = max(s["Status"]["raftTerm"] for s in after) - term_before
        pids = [int(p) for p in etcd_script(args.kit, args.base, "pids").split(",")]
        nodes = []
        for i, pid in enumerate(pids):
            rss = proc_status_kib(pid, "VmRSS") or 0
            nodes.append(
                {
                    "node": f"n{i + 1}",
                    "rss_mib": rss / 1024,
                    "peak_rss_mib": (proc_status_kib(pid, "VmHWM") or 0) / 1024,
                    "rss_bytes_per_key": rss * 1024 / args.keys,
                    "disk_mib": du_bytes(args.base / f"n{i + 1}") / 2**20,
                    "db_size_mib": after[i]["Status"]["dbSize"] / 2**20,
                }
            )
    finally:
        etcd_script(args.kit, args.base, "stop")

    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    result = {
        "command": " ".join(["benchmarks/etcd_memory_bench.py", *sys.argv[1:]]),
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "etcd": version.splitlines()[0] if version else "unknown",
        "keys": args.keys,
        "value_size": args.value_size,
        "in_flight": args.in_flight,
        "load": figures,
        "nodes": nodes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "etcd-memory.json").write_text(json.dumps(result, indent=2) + "\n")
    f = figures
    lines = [
        "# etcd's side of the bulk load (memory per key, hiccups)",
        "",
        f"`{result['command']}`  ",
        f"{result['when']}, {result['machine']}; {result['etcd']}; fresh 3-node cluster "
        "(the kit's etcd_cluster.sh: default settings, fdatasync on).",
        "",
        f"{f['puts']:,} puts to distinct keys of {args.value_size} B values, {args.in_flight} in "
        f"flight, in {f['elapsed_s']:.0f} s ({f['puts_per_s']:.0f} puts/s); errors: {f['errors']}; "
        f"leader changes: {f['leader_changes']}.",
        "",
        f"Puts: median {f['median_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, longest "
        f"{f['longest_ms']:.0f} ms ({f['longest_over_median']:.1f} x the median).",
        "",
        "| node | disk (du) MiB | db size MiB | RSS MiB | peak RSS MiB | RSS B/key |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in nodes:
        lines.append(
            f"| {n['node']} | {n['disk_mib']:.1f} | {n['db_size_mib']:.1f} | {n['rss_mib']:.1f} | "
            f"{n['peak_rss_mib']:.1f} | {n['rss_bytes_per_key']:.0f} |"
        )
    (args.out / "etcd-memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
