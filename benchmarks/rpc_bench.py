"""Micro-benchmark of the RPC layer: round trips per second on loopback.

Each measurement runs in a fresh worker process (so the event-loop policy is
clean) that starts its own echo server in a second process with the same loop,
keeps ``--inflight`` calls outstanding on one connection for ``--duration``
seconds after a short warm-up, and reports completed calls per second and the
CPU time both processes spent per call (client + server, from ``/proc``; on a
shared, busy machine round trips per second swing with the load, CPU per call
much less). Configurations are interleaved run by run, so drift on the machine hits them
all alike; the table shows the median of ``--runs`` runs (min..max beside it).

    .venv/bin/python benchmarks/rpc_bench.py                      # the table
    .venv/bin/python benchmarks/rpc_bench.py --json out.json      # and the raw runs
    .venv/bin/python benchmarks/rpc_bench.py --compare before=/tmp/old/src

``--compare LABEL=SRC`` (repeatable) also measures another source tree of
kvraft (its ``src`` directory) in the same run: before/after figures for a
change to the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAYLOAD = ("put", "some-key", "a value of modest size", 42)
WARMUP_S = 0.3


# --------------------------------------------------------------------- processes


def _use_loop(kind: str) -> None:
    if kind == "uvloop":
        from kvraft.rpc.event_loop import install_event_loop_policy

        assert install_event_loop_policy() == "uvloop", "uvloop is not importable"
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


class _Echo:
    # peer_id has a default so the handler also runs against an older src (--compare).
    async def handle_call(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> Any:
        return args

    def handle_notify(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> None:
        pass


async def _serve() -> None:
    from kvraft.rpc.server import RpcServer

    server = RpcServer(_Echo(), name="bench")
    await server.start("127.0.0.1", 0)
    print(f"PORT {server.address.rpartition(':')[2]}", flush=True)
    # Serve until the worker closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(port: int, server_pid: int, inflight: int, duration_s: float) -> dict[str, Any]:
    from kvraft.rpc.client import RpcClient
    from kvraft.rpc.codec import client_sender

    client = RpcClient(f"127.0.0.1:{port}", client_sender("bench"))
    loop = asyncio.get_running_loop()
    done = 0
    stop = False

    async def caller() -> None:
        nonlocal done
        while not stop:
            result = await client.call("echo", PAYLOAD, timeout=10.0)
            assert result == PAYLOAD
            done += 1

    callers = [loop.create_task(caller()) for _ in range(inflight)]
    await asyncio.sleep(WARMUP_S)
    start, start_done = loop.time(), done
    start_cpu, start_server_cpu = time.process_time(), _cpu_s(server_pid)
    await asyncio.sleep(duration_s)
    elapsed, calls = loop.time() - start, done - start_done
    cpu, server_cpu = time.process_time() - start_cpu, _cpu_s(server_pid)
    stop = True
    await asyncio.gather(*callers)
    client.close()
    result = {"calls": calls, "seconds": elapsed, "rtt_per_s": calls / elapsed}
    if server_cpu is not None and start_server_cpu is not None:
        result["cpu_us_per_rtt"] = (cpu + server_cpu - start_server_cpu) / calls * 1e6
    return result


def _worker(loop_kind: str, inflight: int, duration_s: float) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--loop", loop_kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"server did not start: {line!r}")
        _use_loop(loop_kind)
        port = int(line.split()[1])
        result = asyncio.run(_measure(port, server.pid, inflight, duration_s))
        print(json.dumps(result), flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ------------------------------------------------------------------ orchestrator


def _run_one(src: str | None, loop_kind: str, inflight: int, duration_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--worker", "--loop", loop_kind]
    cmd += ["--inflight", str(inflight), "--duration", str(duration_s)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60 + duration_s)
    if out.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per run")
    parser.add_argument("--inflight", default="1,64", help="comma-separated calls in flight")
    parser.add_argument("--loops", default="asyncio,uvloop", help="comma-separated loops")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=SRC",
        help="also measure the kvraft src dir SRC, labelled LABEL (repeatable)",
    )
    parser.add_argument("--label", default="current", help="label of this tree")
    # internal modes
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        _use_loop(args.loop)
        asyncio.run(_serve())
        return 0
    if args.worker:
        _worker(args.loop, int(args.inflight), args.duration)
        return 0

    impls: list[tuple[str, str | None]] = []
    for spec in args.compare:
        label, sep, src = spec.partition("=")
        if not sep or not (Path(src) / "kvraft").is_dir():
            parser.error(f"--compare wants LABEL=SRC with SRC/kvraft a directory: {spec!r}")
        impls.append((label, str(Path(src).resolve())))
    impls.append((args.label, None))
    configs = [
        (label, src, loop_kind, int(n))
        for loop_kind in args.loops.split(",")
        for n in args.inflight.split(",")
        for label, src in impls
    ]
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (c[0], c[2], c[3]): [] for c in configs
    }
    started = time.monotonic()
    for run in range(args.runs):
        for label, src, loop_kind, inflight in configs:
            result = _run_one(src, loop_kind, inflight, args.duration)
            runs[(label, loop_kind, inflight)].append(result)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    print(
        f"\nRPC round trips per second, loopback, median of {args.runs} runs of "
        f"{args.duration}s (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{time.monotonic() - started:.0f}s total)\n"
    )
    header = (
        f"{'impl':<10} {'loop':<8} {'in flight':>9} {'median rt/s':>12} {'min..max':>18}"
        f" {'CPU us/rt':>10}"
    )
    print(header)
    print("-" * len(header))
    records = []
    for (label, loop_kind, inflight), results in runs.items():
        rates = [r["rtt_per_s"] for r in results]
        cpus = [r["cpu_us_per_rtt"] for r in results if "cpu_us_per_rtt" in r]
        cpu = statistics.median(cpus) if cpus else None
        spread = f"{min(rates):,.0f}..{max(rates):,.0f}"
        cpu_text = f"{cpu:10.1f}" if cpu is not None else f"{'-':>10}"
        print(
            f"{label:<10} {loop_kind:<8} {inflight:>9} {statistics.median(rates):>12,.0f}"
            f" {spread:>18} {cpu_text}"
        )
        records.append(
            {
                "impl": label,
                "loop": loop_kind,
                "inflight": inflight,
                "median_rtt_per_s": statistics.median(rates),
                "median_cpu_us_per_rtt": cpu,
                "runs": results,
            }
        )
    if args.json:
        meta = {
            "duration_s": args.duration,
            "runs": args.runs,
            "payload": list(PAYLOAD),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": records}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
