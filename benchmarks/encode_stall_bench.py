"""How long the event loop stalls while a big snapshot is encoded: thread against fork.

    .venv/bin/python benchmarks/encode_stall_bench.py                 # 1M keys, ~1 minute
    .venv/bin/python benchmarks/encode_stall_bench.py --keys 200000   # a quick look

One process, no cluster: an RSM holding ``--keys`` keys of ``--value-size``
bytes (and a session per client), an asyncio loop running a 1 ms ticker (what
a node's heartbeats and applies need: the loop's turn), and the RSM's
``capture_snapshot`` encoded exactly as the node does it (captured on the loop,
encoded in a worker thread), once per mode:

- ``thread``: a copy of the state encoded in the thread (the GIL is shared
  with the loop);
- ``fork``: a forked child encodes the live state; the thread reads the pipe.

Reported per mode: the capture's time on the loop (copy or fork), the
encoding's wall time, and the loop's longest gap between two ticks and its p99
gap while the encoding runs, against the same with nothing running. Also
the store's memory per key (RSS growth while loading, over the keys).
Results: ``--out``/encode_stall.md and encode_stall.json.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kvraft.kv_protocol import PutOp
from kvraft.server.kvstore import KVStore
from kvraft.server.rsm import RSM

RESULTS = Path(__file__).resolve().parent / "results"
TICK_S = 0.001
# Pure-Python work per tick, standing in for applying entries and answering calls:
# the loop's throughput is how many such ticks it gets through per second.
WORK_PER_TICK_S = 0.0005


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load(rsm: RSM, keys: int, value_size: int) -> None:
    filler = "x" * max(0, value_size - 8)
    for i in range(keys):
        op = PutOp(f"bench/{i:08d}", f"{i:08x}{filler}", 0, f"c{i % 64}", i // 64 + 1, i // 64 + 1)
        rsm.sessions.apply(rsm.store, op, i + 1)
        if i % 100_000 == 0 and i:
            print(f"  loaded {i} keys", file=sys.stderr, flush=True)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(TICK_S)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        busy(WORK_PER_TICK_S)


async def measure(rsm: RSM, mode: str | None, pool: concurrent.futures.Executor) -> dict[str, Any]:
    """Ticker gaps while one snapshot is captured and encoded (``None``: idle for 2 s)."""
    gaps: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.get_running_loop().create_task(ticker(gaps, stop))
    await asyncio.sleep(0.2)
    gaps.clear()
    result: dict[str, Any] = {"mode": mode or "idle"}
    started = time.perf_counter()
    if mode is None:
        await asyncio.sleep(2.0)
    else:
        rsm.fork_snapshots = mode == "fork"
        encode = rsm.capture_snapshot()
        captured = time.perf_counter()
        data = await asyncio.get_running_loop().run_in_executor(pool, encode)
        result["capture_ms"] = (captured - started) * 1000
        result["encode_s"] = time.perf_counter() - captured
        result["bytes"] = len(data)
        del data
    stop.set()
    await tick
    result["ticks_per_s"] = len(gaps) / (time.perf_counter() - started)
    result["max_gap_ms"] = max(gaps) * 1000
    result["p99_gap_ms"] = statistics.quantiles(gaps, n=100)[98] * 1000
    result["ticks"] = len(gaps)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    rsm = RSM(0, KVStore(), op_timeout_s=1.0)
    load(rsm, args.keys, args.value_size)
    gc.collect()
    per_key = (rss_bytes() - before) / args.keys
    runs = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for mode in (None, "thread", "fork") * args.repeats:
            runs.append(await measure(rsm, mode, pool))
            print(f"  {runs[-1]}", file=sys.stderr, flush=True)
    return {
        "keys": args.keys,
        "value_size": args.value_size,
        "data_bytes": rsm.store.data_bytes(),
        "rss_per_key_bytes": per_key,
        "runs": runs,
    }


def write_results(result: dict[str, Any], command: str, out: Path) -> None:
    meta = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode_stall.json").write_text(json.dumps({**meta, **result}, indent=2) + "\n")
    lines = [
        "# The event loop while a snapshot is encoded: thread against fork",
        "",
        f"`{command}`  ",
        f"{meta['date']}, {meta['machine']}, Python {meta['python']}, "
        f"load {meta['load_avg'][0]:.1f}. One process, no cluster: "
        f"{result['keys']:,} keys of {result['value_size']} B values in an RSM "
        f"({result['rss_per_key_bytes']:.0f} B of RSS per key), a 1 ms ticker on the loop, "
        "each snapshot captured on the loop and encoded in a worker thread as the node does.",
        "",
        "| mode | capture on the loop ms | encode s | snapshot MB | loop's longest gap ms "
        "| loop's p99 gap ms | loop's work, ticks/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['mode']} | {r.get('capture_ms', 0):.1f} | {r.get('encode_s', 0):.2f} "
            f"| {r.get('bytes', 0) / 1e6:.0f} | {r['max_gap_ms']:.1f} | {r['p99_gap_ms']:.1f} "
            f"| {r['ticks_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Each tick of the loop sleeps {TICK_S * 1000:g} ms and then works "
        f"{WORK_PER_TICK_S * 1000:g} ms in Python (what applies and replies cost): "
        "'ticks/s' is how much of that work the loop got done while the snapshot was "
        "encoded, against 'idle'. The longest gap includes the capture (the copy, or the fork).",
        "",
    ]
    (out / "encode_stall.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    command = "python benchmarks/encode_stall_bench.py " + " ".join(sys.argv[1:])
    write_results(result, command.strip(), args.out)
    print((args.out / "encode_stall.md").read_text())


if __name__ == "__main__":
    main()
