"""Memory with leases: a million keys on a thousand leases, a hundred watchers, 3 nodes.

    .venv/bin/python benchmarks/lease_memory_bench.py      # 1M keys, 1,000 leases, 100 watchers
    .venv/bin/python benchmarks/lease_memory_bench.py --keys 100000 --leases 100 --watchers 10

A fresh local 3-node cluster (real ``kvraft server`` processes, fsync on,
``--snapshot-threshold`` 16 MiB so that the million keys are snapshotted; the
server's default, 64 MiB, is more than their log) gets ``--leases`` leases (TTL 1 h, so none
expires during the run) and ``--keys`` keys ``k/NNNNNNN`` of ``--value-size``
bytes written by transactions of ``--batch`` sets, key ``n`` on lease
``n % leases`` (1,000 keys a lease by default, under the 4,096 bound). While
it loads, ``--watchers`` watches poll the cluster, watcher ``w`` on the
prefix ``k/`` + its two-digit number (so every write is delivered to one
watcher). At the end, per node: VmRSS and VmHWM (/proc/PID/status), the
snapshot's size and the Raft state from ``kvraft status`` (a snapshot taken
during the load holds part of the keys), and the data dir's disk use; and the
size of the whole final state, as ``kvraft snapshot save`` writes it (the
same state-snapshot encoding, plus the backup file's header). Results go to
``--out``: ``lease_memory.md`` and ``lease_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvraft import AsyncClient, ClientClosed, TxnSet
from kvraft.client.admin import fetch_statuses_async

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_bench import RESULTS, ServerCluster, du_bytes, proc_status_kib

LEASE_TTL_S = 3600
CALL_TIMEOUT_S = 30.0


async def load(args: argparse.Namespace, servers: list[str]) -> dict[str, Any]:
    """Grant the leases, start the watchers, write the keys; counts and the load's time."""
    filler = "x" * max(0, args.value_size - 7)
    async with AsyncClient(servers, call_timeout_s=CALL_TIMEOUT_S) as admin:
        leases = [(await admin.lease_grant(LEASE_TTL_S)).id for _ in range(args.leases)]
        start_revision = (await admin.range(prefix="k/", limit=1)).revision + 1
    delivered = [0] * args.watchers
    watch_client = AsyncClient(servers, call_timeout_s=CALL_TIMEOUT_S)

    async def watcher(w: int) -> None:
        events = watch_client.watch(prefix=f"k/{w:02d}", start_revision=start_revision)
        try:
            async for _ in events:
                delivered[w] += 1
        except ClientClosed:
            pass

    watchers = [asyncio.ensure_future(watcher(w)) for w in range(args.watchers)]
    writers = [AsyncClient(servers, call_timeout_s=CALL_TIMEOUT_S) for _ in range(4)]
    batches = range(0, args.keys, args.batch)
    next_batch = iter(batches)
    started = time.monotonic()
    done = 0

    async def writer(i: int) -> None:
        nonlocal done
        client = writers[i % len(writers)]
        for first in next_batch:
            ops = [
                TxnSet(f"k/{n:07d}", f"{n:07d}"[-7:] + filler, lease=leases[n % len(leases)])
                for n in range(first, min(first + args.batch, args.keys))
            ]
            await client.txn(success=ops)
            done += len(ops)
            if done % 100_000 < args.batch:
                rate = done / (time.monotonic() - started)
                print(f"  {done} keys, {rate:.0f}/s", file=sys.stderr, flush=True)

    await asyncio.gather(*(writer(i) for i in range(args.in_flight)))
    seconds = time.monotonic() - started
    # Let the watchers catch up (bounded), then stop them.
    give_up = time.monotonic() + 60
    while sum(delivered) < args.keys and time.monotonic() < give_up:
        await asyncio.sleep(0.5)
    await watch_client.close()
    await asyncio.gather(*watchers, return_exceptions=True)
    for client in writers:
        await client.close()
    return {"seconds": seconds, "events_delivered": sum(delivered)}


def node_rows(cluster: ServerCluster, statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(cluster.addresses)):
        row = next((r for r in statuses if r.get("id") == i), {})
        rows.append(
            {
                "node": i,
                "role": row.get("role"),
                "keys": row.get("keys"),
                "leases": row.get("leases"),
                "rss_kib": proc_status_kib(cluster.pid(i), "VmRSS"),
                "peak_rss_kib": proc_status_kib(cluster.pid(i), "VmHWM"),
                "snapshot_bytes": row.get("snapshot_bytes"),
                "snapshot_index": row.get("snapshot_index"),
                "storage_bytes": row.get("storage_bytes"),
                "du_bytes": du_bytes(cluster.data_dir(i)),
            }
        )
    return rows


def write_results(result: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "lease_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    mib = 1024 * 1024
    lines = [
        "# Memory with a million keys on a thousand leases and a hundred watchers",
        "",
        f"`{result['command']}`  ",
        f"{result['date']}, {result['machine']}, load {result['load_avg'][0]:.1f}. "
        f"Fresh local 3-node cluster, fsync on, snapshot threshold "
        f"{result['snapshot_threshold'] / mib:g} MiB.",
        "",
        f"{result['keys']:,} keys of {result['value_size']} B values on {result['leases']:,} "
        f"leases, {result['watchers']} watchers ({result['events_delivered']:,} events "
        f"delivered); loaded in {result['seconds']:.0f} s by txns of {result['batch']} sets. "
        f"The whole final state (`kvraft snapshot save`): "
        f"{result['final_state_bytes'] / mib:.1f} MiB.",
        "",
        "| node | role | keys | leases | RSS MiB | peak RSS MiB | last snapshot MiB (index) "
        "| Raft state MiB | disk (du) MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in result["nodes"]:
        lines.append(
            f"| n{n['node']} | {n['role']} | {n['keys']} | {n['leases']} "
            f"| {(n['rss_kib'] or 0) / 1024:.1f} | {(n['peak_rss_kib'] or 0) / 1024:.1f} "
            f"| {(n['snapshot_bytes'] or 0) / mib:.1f} ({n['snapshot_index']}) "
            f"| {(n['storage_bytes'] or 0) / mib:.1f} "
            f"| {n['du_bytes'] / mib:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "lease_memory.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--value-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128, help="sets per txn (at most 128)")
    parser.add_argument("--in-flight", type=int, default=16, help="txns at a time")
    parser.add_argument("--snapshot-threshold", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvraft-lease-mem-") as tmp:
        server_args = ["--snapshot-threshold", str(args.snapshot_threshold)]
        cluster = ServerCluster(Path(tmp), server_args, log_level="info")
        cluster.start()
        try:
            cluster.wait_for_leader()
            counts = asyncio.run(load(args, cluster.addresses))
            time.sleep(3.0)  # followers apply; any snapshot in progress finishes
            statuses = asyncio.run(fetch_statuses_async(cluster.addresses, 5.0))
            nodes = node_rows(cluster, statuses)  # before the backup's encoding
            backup = Path(tmp) / "final.snapshot"
            save = [sys.executable, "-m", "kvraft", "snapshot", "save", str(backup)]
            save += ["--servers", ",".join(cluster.addresses), "--timeout", "120"]
            subprocess.run(save, check=True)
            result = {
                "command": "python benchmarks/lease_memory_bench.py " + " ".join(sys.argv[1:]),
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
                "load_avg": os.getloadavg(),
                "keys": args.keys,
                "leases": args.leases,
                "watchers": args.watchers,
                "value_size": args.value_size,
                "batch": args.batch,
                "snapshot_threshold": args.snapshot_threshold,
                "final_state_bytes": backup.stat().st_size,
                **counts,
                "nodes": nodes,
            }
        finally:
            cluster.stop()
    print(write_results(result, args.out))


if __name__ == "__main__":
    main()
