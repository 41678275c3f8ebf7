"""Memory per key and the hiccups of big state: a bulk load of a million distinct keys.

    .venv/bin/python benchmarks/memory_bench.py                       # 1M keys, ~8 minutes
    .venv/bin/python benchmarks/memory_bench.py --keys 100000         # a quick look
    .venv/bin/python benchmarks/memory_bench.py --keys 1000 --puts 1000000 --thresholds 0,4194304
                                                                      # the log-bound check

For each snapshot threshold (``0`` is the server's default, 64 MiB), a fresh
local 3-node cluster (real ``kvraft server`` processes, default settings, peer
secret on, fsync on; ``--server-args`` adds flags) takes ``--puts`` versioned
puts (default: one per key) spread evenly over ``--keys`` keys of
``--value-size`` bytes, ``--in-flight`` at a time, through clients with the
default call timeout (a put that outlives it is resent, and may end in
``Maybe``, as a real client's would).

Reported for the load: puts/s, the median, p99 and longest put (and the
longest over the median: issue 14 asks < 10), the ``Maybe``s, and the leader
changes (``became leader`` lines after the first election). Per node: the
disk use of its data dir (``du``), its resident memory (``VmRSS`` and the peak
``VmHWM`` from ``/proc/PID/status``) and RSS per key, its Raft state
(``storage_bytes``, snapshot, log length) from ``kvraft status``, and its
snapshots (count, longest, and that one's phases from the node's log line).
Against the data size, the sum over keys of key plus value bytes. Results go
to ``--out``: ``memory.md`` and ``memory.json``.

The helpers here (a cluster with extra server flags, puts that resolve
``Maybe``, /proc and du readers) are shared with ``snapshot_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvraft.client.admin import fetch_statuses_async
from kvraft.client.async_client import DEFAULT_CALL_TIMEOUT_S, AsyncClient
from kvraft.errors import Maybe, VersionMismatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LocalCluster  # benchmarks/ is not a package

RESULTS = Path(__file__).resolve().parent / "results"
# Long enough that a snapshot stall is waited out rather than turned into resends
# (snapshot_bench's choice; this bench's own load uses the client's default).
CALL_TIMEOUT_S = 30.0
SNAPSHOT_LINE = re.compile(
    r"snapshot at index (?P<index>\d+) \((?P<bytes>\d+) bytes\) in (?P<ms>\d+) ms"
    r" \(copy (?P<copy>[\d.]+) ms on the loop, encode (?P<encode>\d+) ms,"
    r" write (?P<write>\d+) ms, record (?P<record>\d+) ms\)"
)
BECAME_LEADER = "became leader at index"


class ServerCluster(LocalCluster):
    """LocalCluster with extra ``kvraft server`` flags and a chosen log level."""

    def __init__(
        self, base_dir: Path, server_args: Sequence[str] = (), log_level: str = "warning"
    ) -> None:
        super().__init__(base_dir)
        self.server_args = list(server_args)
        self.log_level = log_level

    def start(self) -> None:
        peers = ",".join(f"{i}={a}" for i, a in enumerate(self.addresses))
        for i, address in enumerate(self.addresses):
            cmd = [sys.executable, "-m", "kvraft", "--log-level", self.log_level, "server"]
            cmd += ["--id", str(i), "--listen", address, "--peers", peers]
            cmd += ["--data-dir", str(self.data_dir(i)), *self.server_args]
            cmd += ["--peer-secret-file", str(self.secret_file)]
            with open(self.log_path(i), "ab") as log:
                self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def data_dir(self, i: int) -> Path:
        return self.base_dir / f"n{i}"

    def log_path(self, i: int) -> Path:
        return self.base_dir / f"n{i}.log"

    def pid(self, i: int) -> int:
        proc = self.procs[i]
        assert proc is not None
        return proc.pid


def proc_status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), in KiB; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def du_bytes(path: Path) -> int:
    """Disk use of ``path`` (``du -s``: allocated blocks, not apparent size), in bytes."""
    out = subprocess.run(
        ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


# A put slower than this is listed with the time it started (see LoadStats.slow).
SLOW_PUT_S = 0.1


class LoadStats:
    """What a load saw: each put's latency and the Maybes (counted, then resolved by a read)."""

    def __init__(self) -> None:
        self.latencies_s: list[float] = []
        self.maybes = 0
        # (latency s, wall-clock time it started) of every put over SLOW_PUT_S:
        # to find, in the node logs, what the longest puts waited behind.
        self.slow: list[tuple[float, float]] = []


async def put_resolving(
    client: AsyncClient,
    key: str,
    value: str,
    versions: dict[str, int],
    stats: LoadStats | None = None,
) -> None:
    """Put at the version we know; on Maybe or a mismatch, re-read the key's version."""
    started = time.perf_counter()
    try:
        versions[key] = await client.put(key, value, versions.get(key, 0))
    except (Maybe, VersionMismatch) as exc:
        if stats is not None and isinstance(exc, Maybe):
            stats.maybes += 1
        versions[key] = (await client.get(key))[1]
    if stats is not None:
        elapsed = time.perf_counter() - started
        stats.latencies_s.append(elapsed)
        if elapsed > SLOW_PUT_S:
            stats.slow.append((elapsed, time.time() - elapsed))


async def put_workload(
    servers: Sequence[str],
    keys: Sequence[str],
    value_of: Any,
    in_flight: int,
    *,
    puts: int | None = None,
    until: float | None = None,
    versions: dict[str, int] | None = None,
    completions: list[float] | None = None,
    clients: int = 8,
    progress: Any = None,
    stats: LoadStats | None = None,
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> dict[str, int]:
    """``puts`` puts (or puts until ``time.time() >= until``), ``in_flight`` at a time.

    Worker ``w`` owns keys ``w, w + in_flight, ...`` and cycles over them, so
    puts never conflict; ``value_of(n)`` is the value of the n-th put. Appends
    each completion time to ``completions``; returns the versions.
    """
    assert len(keys) >= in_flight, "each put in flight owns its keys"
    versions = {} if versions is None else versions
    issued = 0
    done = 0
    conns = [AsyncClient(list(servers), call_timeout_s=call_timeout_s) for _ in range(clients)]

    async def worker(w: int) -> None:
        nonlocal issued, done
        mine = keys[w::in_flight]
        client = conns[w % clients]
        i = 0
        while True:
            if puts is not None and issued >= puts:
                return
            if until is not None and time.time() >= until:
                return
            n = issued
            issued += 1
            await put_resolving(client, mine[i % len(mine)], value_of(n), versions, stats)
            i += 1
            done += 1
            if completions is not None:
                completions.append(time.time())
            if progress is not None and done % 50_000 == 0:
                progress(done)

    try:
        await asyncio.gather(*(worker(w) for w in range(in_flight)))
    finally:
        for conn in conns:
            await conn.close()
    return versions


def node_log_figures(path: Path) -> dict[str, Any]:
    """Elections won and snapshots taken, from one node's log."""
    text = path.read_text(errors="replace").splitlines()
    snapshots = [m for m in (SNAPSHOT_LINE.search(line) for line in text) if m]
    longest = max(snapshots, key=lambda m: int(m["ms"]), default=None)
    return {
        "elections_won": sum(BECAME_LEADER in line for line in text),
        "snapshots_taken": len(snapshots),
        "longest_snapshot": None
        if longest is None
        else {
            "bytes": int(longest["bytes"]),
            "ms": int(longest["ms"]),
            "copy_ms": float(longest["copy"]),
            "encode_ms": int(longest["encode"]),
            "write_ms": int(longest["write"]),
            "record_ms": int(longest["record"]),
        },
    }


def one_run(args: argparse.Namespace, threshold: int, base: Path) -> dict[str, Any]:
    server_args = ["--snapshot-threshold", str(threshold)] if threshold else []
    server_args += args.server_args.split()
    cluster = ServerCluster(base, server_args, log_level="info")
    cluster.start()
    try:
        cluster.wait_for_leader()
        time.sleep(1.0)  # the first election's lines are in the logs
        elections_before = sum(
            node_log_figures(cluster.log_path(i))["elections_won"]
            for i in range(len(cluster.addresses))
        )
        keys = [f"key/{k:07d}" for k in range(args.keys)]
        value_size: int = args.value_size
        filler = "x" * max(0, value_size - 8)
        puts = args.puts or args.keys

        def value_of(n: int) -> str:
            return f"{n:08x}"[-8:] + filler if value_size >= 8 else "v" * value_size

        started = time.time()

        def progress(done: int) -> None:
            rate = done / (time.time() - started)
            rss = [proc_status_kib(cluster.pid(i), "VmRSS") for i in range(3)]
            print(f"  {done} puts, {rate:.0f}/s, RSS KiB {rss}", file=sys.stderr, flush=True)

        stats = LoadStats()
        asyncio.run(
            put_workload(
                cluster.addresses,
                keys,
                value_of,
                args.in_flight,
                puts=puts,
                progress=progress,
                stats=stats,
                clients=args.clients,
                call_timeout_s=args.call_timeout,
            )
        )
        elapsed = time.time() - started
        time.sleep(2.0)  # let followers apply and settle
        statuses = asyncio.run(fetch_statuses_async(cluster.addresses, 2.0))
        data_bytes = sum(len(k) + len(value_of(0)) for k in keys)
        nodes = []
        for i in range(len(cluster.addresses)):
            row = next((r for r in statuses if r.get("id") == i), {})
            rss_kib = proc_status_kib(cluster.pid(i), "VmRSS")
            nodes.append(
                {
                    "node": i,
                    "role": row.get("role"),
                    "du_bytes": du_bytes(cluster.data_dir(i)),
                    "files": {
                        p.name: p.stat().st_size for p in sorted(cluster.data_dir(i).iterdir())
                    },
                    "rss_kib": rss_kib,
                    "peak_rss_kib": proc_status_kib(cluster.pid(i), "VmHWM"),
                    "rss_per_key_bytes": (rss_kib or 0) * 1024 / args.keys,
                    "storage_bytes": row.get("storage_bytes"),
                    "snapshot_bytes": row.get("snapshot_bytes"),
                    "snapshot_index": row.get("snapshot_index"),
                    "log_length": row.get("log_length"),
                    "applied": row.get("applied_index", row.get("applied")),
                    **node_log_figures(cluster.log_path(i)),
                }
            )
        lat = sorted(stats.latencies_s)
        median = statistics.median(lat)
        return {
            "threshold_bytes": threshold or 64 * 1024 * 1024,
            "threshold_flag": threshold or None,
            "server_args": server_args,
            "puts": puts,
            "keys": args.keys,
            "value_size": args.value_size,
            "in_flight": args.in_flight,
            "clients": args.clients,
            "call_timeout_s": args.call_timeout,
            "data_bytes": data_bytes,
            "seconds": elapsed,
            "puts_per_s": puts / elapsed,
            "put_median_ms": median * 1000,
            "put_p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000,
            "put_max_ms": lat[-1] * 1000,
            "max_over_median": lat[-1] / median,
            "maybes": stats.maybes,
            "slowest_puts": [
                {
                    "ms": round(s * 1000, 1),
                    "started": time.strftime("%H:%M:%S", time.localtime(t))
                    + f".{int(t * 1000) % 1000:03d}",
                }
                for s, t in sorted(stats.slow, reverse=True)[:20]
            ],
            "leader_changes": sum(n["elections_won"] for n in nodes) - elections_before,
            "nodes": nodes,
        }
    finally:
        cluster.stop()


def write_results(results: list[dict[str, Any]], command: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg": os.getloadavg(),
    }
    (out / "memory.json").write_text(json.dumps({**meta, "runs": results}, indent=2) + "\n")
    mib = 1024 * 1024
    lines = [
        "# Memory per key and the hiccups of a bulk load",
        "",
        f"`{command}`  ",
        f"{meta['date']}, {meta['machine']}, load {meta['load_avg'][0]:.1f}. "
        "Fresh local 3-node cluster per run (default settings, peer secret), fsync on "
        "(SQLite synchronous=FULL).",
        "",
    ]
    for run in results:
        extra = " ".join(a for a in run["server_args"] if not a.isdigit())
        lines += [
            f"## Snapshot threshold {run['threshold_bytes'] / mib:g} MiB"
            f"{' (default)' if run['threshold_flag'] is None else ''}"
            f"{f' ({extra})' if extra else ''}",
            "",
            f"{run['puts']:,} puts over {run['keys']:,} keys of {run['value_size']} B values, "
            f"{run['in_flight']} in flight over {run['clients']} clients "
            f"(call timeout {run['call_timeout_s']:g} s), "
            f"in {run['seconds']:.0f} s ({run['puts_per_s']:.0f} puts/s); "
            f"data size (keys + values) {run['data_bytes'] / mib:.1f} MiB.",
            "",
            f"Puts: median {run['put_median_ms']:.1f} ms, p99 {run['put_p99_ms']:.1f} ms, "
            f"longest {run['put_max_ms']:.0f} ms ({run['max_over_median']:.1f} x the median); "
            f"Maybe: {run['maybes']}; leader changes: {run['leader_changes']}.",
            "",
            "| node | role | disk (du) MiB | RSS MiB | peak RSS MiB | RSS B/key | Raft state MiB "
            "| snapshot MiB | log entries | snapshots | longest snapshot ms "
            "(copy/fork on the loop + encode + write + record) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for n in run["nodes"]:
            snap = n["longest_snapshot"]
            phases = (
                "-"
                if snap is None
                else f"{snap['ms']} ({snap['copy_ms']:.0f} + {snap['encode_ms']} "
                f"+ {snap['write_ms']} + {snap['record_ms']})"
            )
            lines.append(
                f"| n{n['node']} | {n['role']} | {n['du_bytes'] / mib:.1f} "
                f"| {(n['rss_kib'] or 0) / 1024:.1f} | {(n['peak_rss_kib'] or 0) / 1024:.1f} "
                f"| {n['rss_per_key_bytes']:.0f} "
                f"| {(n['storage_bytes'] or 0) / mib:.1f} "
                f"| {(n['snapshot_bytes'] or 0) / mib:.1f} | {n['log_length']} "
                f"| {n['snapshots_taken']} | {phases} |"
            )
        lines.append("")
    (out / "memory.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--puts", type=int, default=0, help="default: one per key")
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8, help="connections the puts share")
    parser.add_argument("--call-timeout", type=float, default=DEFAULT_CALL_TIMEOUT_S)
    parser.add_argument("--server-args", default="", help="extra kvraft server flags")
    parser.add_argument(
        "--thresholds",
        default="0",
        help="comma-separated snapshot thresholds in bytes; 0 = the server default (64 MiB)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the clusters' data dirs and node logs here (default: a temporary dir)",
    )
    args = parser.parse_args()
    command = "python benchmarks/memory_bench.py " + " ".join(sys.argv[1:])
    results = []
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvraft-mem-")))
        else:
            work = args.keep
        for threshold in (int(t) for t in args.thresholds.split(",")):
            print(f"threshold {threshold or 'default'}: {args.keys} keys", file=sys.stderr)
            results.append(one_run(args, threshold, work / f"t{threshold}"))
            write_results(results, command.strip(), args.out)
    print((args.out / "memory.md").read_text())


if __name__ == "__main__":
    main()
