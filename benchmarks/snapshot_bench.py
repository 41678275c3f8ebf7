"""The longest pause in applying commands while a snapshot of 100 MB is taken.

    .venv/bin/python benchmarks/snapshot_bench.py              # 3 repetitions, ~10 minutes
    .venv/bin/python benchmarks/snapshot_bench.py --repeats 1 --keys 20000   # a quick look

Each repetition runs two fresh local 3-node clusters (real ``kvraft server``
processes, fsync on), interleaved: ``baseline`` with snapshots off
(``--snapshot-threshold 0``) and ``snapshot`` with a threshold just above the
Raft state after loading, so every node snapshots ~100 MB during the
measured phase. In both:

1. load ``--keys`` keys of ``--value-size`` bytes (100,000 x 1 KB = ~100 MB),
   ``--in-flight`` puts at a time;
2. measured phase: writers keep overwriting those keys (``--phase-in-flight``
   at a time, so the data stays ~100 MB) while a probe, in its own process,
   puts one key in a loop, one put at a time, recording each put's start and
   end. The phase lasts ``--phase`` seconds, and in ``snapshot`` mode at least
   until every node logged its snapshot plus 3 s.

Reported, medians over the repetitions: the probe's longest put and longest
gap between consecutive completions, p50/p99, and the longest gap between any
two completions of the writers (the cluster applying nothing at all); in
``snapshot`` mode also these within the snapshot windows (from each node's
``snapshot at index ... in N ms (copy, encode, write, record)`` log line, +-0.5 s),
and the snapshot's size and times per node. Results: ``--out``/snapshot.md
and snapshot.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvraft.client.admin import fetch_statuses_async
from kvraft.client.async_client import AsyncClient
from kvraft.kv_protocol import PutOp
from kvraft.server.commands import encode_command

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from memory_bench import ServerCluster, du_bytes, proc_status_kib, put_resolving, put_workload

RESULTS = Path(__file__).resolve().parent / "results"
SNAPSHOT_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO kvraft\.node: n(?P<node>\d+) "
    r"\[term \d+\] snapshot at index (?P<index>\d+) \((?P<bytes>\d+) bytes\) in (?P<ms>\d+) ms"
    r"(?: \(copy (?P<copy>[\d.]+) ms on the loop, encode (?P<encode>\d+) ms, "
    r"write (?P<write>\d+) ms, record (?P<record>\d+) ms\))?"
)
SLOW_FSYNC = re.compile(
    r"^(?P<ts>\S+ \S+) WARNING kvraft\.node: n\d+ (?:\[term \d+\] )?slow fsync: (?P<ms>\d+) ms"
)
WINDOW_MARGIN_S = 0.5
SETTLE_AFTER_SNAPSHOT_S = 3.0
MAX_PHASE_S = 180.0


# ------------------------------------------------------------------------ probe


async def probe(servers: list[str], stop_file: Path, out: Path) -> None:
    """One put at a time to one key until ``stop_file`` exists; (start, end) of each."""
    key = f"probe/{os.getpid()}"
    versions: dict[str, int] = {}
    samples: list[tuple[float, float]] = []
    async with AsyncClient(servers, call_timeout_s=30.0) as client:
        n = 0
        while not stop_file.exists():
            start = time.time()
            await put_resolving(client, key, f"{n:08x}" + "p" * 92, versions)
            samples.append((start, time.time()))
            n += 1
    out.write_text(json.dumps(samples))


# -------------------------------------------------------------------- one run


def log_time(ts: str) -> float:
    """Epoch seconds of a logging ``asctime`` (local time, ms after a comma)."""
    base, ms = ts.split(",")
    return time.mktime(time.strptime(base, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def snapshot_events(cluster: ServerCluster) -> list[dict[str, Any]]:
    events = []
    for i in range(len(cluster.addresses)):
        for line in cluster.log_path(i).read_text(errors="replace").splitlines():
            m = SNAPSHOT_LINE.match(line)
            if m:
                end = log_time(m["ts"])
                events.append(
                    {
                        "node": int(m["node"]),
                        "index": int(m["index"]),
                        "bytes": int(m["bytes"]),
                        "total_ms": int(m["ms"]),
                        "copy_ms": float(m["copy"]) if m["copy"] else None,
                        "encode_ms": int(m["encode"]) if m["encode"] else None,
                        "write_ms": int(m["write"]) if m["write"] else None,
                        "record_ms": int(m["record"]) if m["record"] else None,
                        "start": end - int(m["ms"]) / 1000,
                        "end": end,
                    }
                )
    return events


def slow_fsyncs(cluster: ServerCluster) -> list[int]:
    found = []
    for i in range(len(cluster.addresses)):
        for line in cluster.log_path(i).read_text(errors="replace").splitlines():
            m = SLOW_FSYNC.match(line)
            if m:
                found.append(int(m["ms"]))
    return found


def pause_figures(
    samples: list[tuple[float, float]], completions: list[float], lo: float, hi: float
) -> dict[str, Any]:
    """Probe latency and gaps, and the writers' longest gap, for puts ending in [lo, hi]."""
    inside = [(s, e) for s, e in samples if lo <= e <= hi]
    latencies = sorted((e - s) * 1000 for s, e in inside)
    ends = [e for _, e in inside]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(ends)]
    writer_ends = sorted(t for t in completions if lo <= t <= hi)
    writer_gaps = [(b - a) * 1000 for a, b in itertools.pairwise(writer_ends)]
    return {
        "probe_puts": len(inside),
        "probe_p50_ms": statistics.median(latencies) if latencies else None,
        "probe_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "probe_max_ms": latencies[-1] if latencies else None,
        "probe_max_gap_ms": max(gaps) if gaps else None,
        "writer_puts": len(writer_ends),
        "writer_max_gap_ms": max(writer_gaps) if writer_gaps else None,
        "seconds": hi - lo,
    }


def entry_bytes(key: str, value: str) -> int:
    """What SqliteStorage.size_bytes counts for one put of ``key``: 32 + the command."""
    op = PutOp(
        key=key, value=value, version=1, client_id="0" * 32, request_id=100_000, acked_below=100_000
    )
    return 32 + len(encode_command(op))


def one_run(args: argparse.Namespace, mode: str, base: Path, log: Any) -> dict[str, Any]:
    keys = [f"snap/{k:06d}" for k in range(args.keys)]
    filler = "x" * (args.value_size - 8)

    def value_of(n: int) -> str:
        return f"{n:08x}"[-8:] + filler

    load_bytes = args.keys * entry_bytes(keys[0], value_of(0))
    threshold = 0
    if mode == "snapshot":
        threshold = args.threshold or load_bytes + int(args.margin_mib * 1024 * 1024)
    cluster = ServerCluster(base, ["--snapshot-threshold", str(threshold)], log_level="info")
    cluster.start()
    try:
        cluster.wait_for_leader()
        started = time.time()
        versions = asyncio.run(
            put_workload(cluster.addresses, keys, value_of, args.in_flight, puts=len(keys))
        )
        load_s = time.time() - started
        log(f"  {mode}: loaded {len(keys)} keys in {load_s:.0f} s")
        stop_file = base / "probe.stop"
        probe_out = base / "probe.json"
        probe_proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--probe",
                ",".join(cluster.addresses),
                "--probe-stop",
                str(stop_file),
                "--probe-out",
                str(probe_out),
            ]
        )
        completions: list[float] = []
        phase_start = time.time()

        def phase_over() -> bool:
            now = time.time()
            if now - phase_start >= MAX_PHASE_S:
                return True
            if now - phase_start < args.phase:
                return False
            if mode == "baseline":
                return True
            events = snapshot_events(cluster)
            nodes = {e["node"] for e in events}
            return (
                len(nodes) == len(cluster.addresses)
                and now - max(e["end"] for e in events) >= SETTLE_AFTER_SNAPSHOT_S
            )

        async def phase() -> None:
            stop = asyncio.Event()

            async def watch() -> None:
                while not phase_over():
                    await asyncio.sleep(0.5)
                stop.set()

            async def write() -> None:
                # Writers run in slices so the phase can end when the watcher says so.
                while not stop.is_set():
                    await put_workload(
                        cluster.addresses,
                        keys,
                        value_of,
                        args.phase_in_flight,
                        until=time.time() + 1.0,
                        versions=versions,
                        completions=completions,
                        clients=4,
                    )

            await asyncio.gather(watch(), write())

        asyncio.run(phase())
        phase_end = time.time()
        stop_file.touch()
        probe_proc.wait(60)
        samples = [tuple(s) for s in json.loads(probe_out.read_text())]
        statuses = asyncio.run(fetch_statuses_async(cluster.addresses, 2.0))
        events = snapshot_events(cluster)
        result: dict[str, Any] = {
            "mode": mode,
            "threshold_bytes": threshold,
            "load_s": load_s,
            "whole_phase": pause_figures(samples, completions, phase_start, phase_end),  # type: ignore[arg-type]
            "snapshots": events,
            "slow_fsync_ms": slow_fsyncs(cluster),
            "nodes": [
                {
                    "node": i,
                    "role": next((r.get("role") for r in statuses if r.get("id") == i), None),
                    "rss_kib": proc_status_kib(cluster.pid(i), "VmRSS"),
                    "du_bytes": du_bytes(cluster.data_dir(i)),
                }
                for i in range(len(cluster.addresses))
            ],
        }
        if events:
            lo = min(e["start"] for e in events) - WINDOW_MARGIN_S
            hi = max(e["end"] for e in events) + WINDOW_MARGIN_S
            result["during_snapshots"] = pause_figures(samples, completions, lo, hi)  # type: ignore[arg-type]
        whole = result["whole_phase"]
        log(
            f"  {mode}: probe max {whole['probe_max_ms']:.0f} ms, gap "
            f"{whole['probe_max_gap_ms']:.0f} ms, "
            f"writers' gap {whole['writer_max_gap_ms']:.0f} ms; "
            f"snapshots {[(e['node'], e['bytes'], e['total_ms']) for e in events]}"
        )
        return result
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------- results


def med(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_mode: dict[str, Any] = {}
    for mode in ("baseline", "snapshot"):
        mine = [r for r in runs if r["mode"] == mode]
        row: dict[str, Any] = {}
        for scope in ("whole_phase", "during_snapshots"):
            scoped = [r[scope] for r in mine if scope in r]
            if not scoped:
                continue
            row[scope] = {k: med([s[k] for s in scoped]) for k in scoped[0] if k != "seconds"} | {
                f"{k}_runs": [s[k] for s in scoped] for k in ("probe_max_ms", "probe_max_gap_ms")
            }
        events = [e for r in mine for e in r["snapshots"]]
        if events:
            row["snapshot"] = {
                k: med([e[k] for e in events])
                for k in ("bytes", "total_ms", "copy_ms", "encode_ms", "write_ms", "record_ms")
            } | {"count": len(events), "max_record_ms": max(e["record_ms"] or 0 for e in events)}
        row["slow_fsync_ms"] = [ms for r in mine for ms in r["slow_fsync_ms"]]
        by_mode[mode] = row
    return by_mode


def write_results(
    runs: list[dict[str, Any]], args: argparse.Namespace, command: str, out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    meta = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg": os.getloadavg(),
        "keys": args.keys,
        "value_size": args.value_size,
    }
    doc = {**meta, "summary": summary, "runs": runs}
    (out / "snapshot.json").write_text(json.dumps(doc, indent=2) + "\n")

    def f(v: Any, spec: str = ".0f") -> str:
        return "—" if v is None else format(v, spec)

    lines = [
        "# Apply pauses while a 100 MB snapshot is taken",
        "",
        f"`{command}`  ",
        f"{meta['date']}, {meta['machine']}, load {meta['load_avg'][0]:.1f}. "
        f"Fresh local 3-node clusters, fsync on; {args.keys:,} keys x {args.value_size} B "
        f"loaded, then overwritten by {args.phase_in_flight} writers in flight while a probe "
        "process puts one key, one put at a time. Medians of "
        f"{len([r for r in runs if r['mode'] == 'baseline'])} runs per mode.",
        "",
        "| mode | scope | probe puts | probe p50 ms | probe p99 ms | probe max ms "
        "| probe max gap ms | writers' max gap ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, row in summary.items():
        for scope in ("whole_phase", "during_snapshots"):
            if scope not in row:
                continue
            s = row[scope]
            lines.append(
                f"| {mode} | {scope.replace('_', ' ')} | {f(s['probe_puts'])} "
                f"| {f(s['probe_p50_ms'], '.1f')} | {f(s['probe_p99_ms'])} "
                f"| {f(s['probe_max_ms'])} | {f(s['probe_max_gap_ms'])} "
                f"| {f(s['writer_max_gap_ms'])} |"
            )
    snap = summary.get("snapshot", {}).get("snapshot")
    if snap:
        lines += [
            "",
            f"Snapshots ({snap['count']} over all nodes and runs), medians: "
            f"{snap['bytes'] / 1e6:.1f} MB, total {f(snap['total_ms'])} ms = copy on the "
            f"event loop {f(snap['copy_ms'], '.1f')} ms + encode in its own thread "
            f"{f(snap['encode_ms'])} ms + write its file in that thread, while Readys "
            f"are saved, {f(snap['write_ms'])} ms + record it (SqliteStorage.compact in "
            f"the storage thread, which holds up Ready saves meanwhile) "
            f"{f(snap['record_ms'])} ms; longest record {snap['max_record_ms']} ms.",
        ]
    for mode, row in summary.items():
        if row["slow_fsync_ms"]:
            lines.append(f"Slow-fsync warnings ({mode}): {row['slow_fsync_ms']} ms.")
    lines += [
        "",
        "Probe max ms: the longest single put; probe max gap: the longest time between",
        "two consecutive probe completions; writers' max gap: the longest time in which",
        "none of the writers' puts completed. 'During snapshots' is the span from the",
        "first node's snapshot start to the last one's end, +-0.5 s.",
        "",
    ]
    (out / "snapshot.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--phase-in-flight", type=int, default=16)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds, at least")
    parser.add_argument(
        "--margin-mib", type=float, default=8.0, help="threshold above the loaded Raft state"
    )
    parser.add_argument("--threshold", type=int, default=0, help="override the threshold")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-stop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        asyncio.run(probe(args.probe.split(","), args.probe_stop, args.probe_out))
        return

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    command = ("python benchmarks/snapshot_bench.py " + " ".join(sys.argv[1:])).strip()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kvraft-snap-") as tmp:
        for rep in range(args.repeats):
            for mode in ("baseline", "snapshot"):
                log(f"rep {rep}: {mode}")
                runs.append(one_run(args, mode, Path(tmp) / f"{mode}{rep}", log))
                write_results(runs, args, command, args.out)
    print((args.out / "snapshot.md").read_text())


if __name__ == "__main__":
    main()
