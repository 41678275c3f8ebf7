"""The standard benchmark set, on fresh local 3-node clusters with fsync on.

    .venv/bin/python benchmarks/run.py                 # or: make bench
    .venv/bin/python benchmarks/run.py --repeats 1 --duration 2   # a quick look

Each repetition starts a fresh cluster (real ``kvraft server`` processes, no
proxies, default settings: SQLite with synchronous=FULL, 10 ms ticks,
election timeout 150-300 ms) and runs, through the client library:

- sequential puts: the blocking ``kvraft.Client``, one put after another;
- puts at 1, 8, 64 and 256 in flight (``kvraft bench --workload put``);
- gets at 1 and 64 in flight (``kvraft bench --workload get``);
- failover, on another fresh cluster: puts at 64 in flight, the leader is
  SIGKILLed, and the time until a put sent after the kill succeeds.

Repetitions are interleaved (the whole set, then again), so drift on the
machine hits every row alike. The results (medians over the repetitions,
with each run's figure beside them in the JSON) go to ``--out``:
``results.md``, ``results.json`` and, if matplotlib is installed (the
``bench`` extra), ``throughput_latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvraft.bench import Bench, BenchConfig, OpStats, failover_time_s
from kvraft.client.admin import fetch_statuses_async
from kvraft.client.client import Client
from kvraft.local_cluster import ensure_peer_secret
from kvraft.rpc.event_loop import install_event_loop_policy

ROOT = Path(__file__).resolve().parent.parent
PUT_IN_FLIGHT = (1, 8, 64, 256)
GET_IN_FLIGHT = (1, 64)
FAILOVER_IN_FLIGHT = 64
TARGETS = {
    # what the project aims at, checked against the medians
    "put_256_ops_per_s": (">=", 10_000.0),
    "sequential_put_p50_ms": ("<=", 1.0),
    "get_64_ops_per_s": (">=", 11_500.0),
    "failover_s": ("<", 0.5),
}


# ---------------------------------------------------------------- local cluster


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """n ``kvraft server`` processes on loopback, each with its own data dir and log."""

    def __init__(self, base_dir: Path, n: int = 3, host: str = "127.0.0.1") -> None:
        self.base_dir = base_dir
        self.addresses = [f"{host}:{free_port(host)}" for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        base_dir.mkdir(parents=True, exist_ok=True)
        # Peers authenticate, as in production (the handshake costs one round trip per connection).
        self.secret_file = ensure_peer_secret(base_dir)

    def start(self) -> None:
        peers = ",".join(f"{i}={a}" for i, a in enumerate(self.addresses))
        for i, address in enumerate(self.addresses):
            cmd = [sys.executable, "-m", "kvraft", "--log-level", "warning", "server"]
            cmd += ["--id", str(i), "--listen", address, "--peers", peers]
            cmd += ["--data-dir", str(self.base_dir / f"n{i}")]
            cmd += ["--peer-secret-file", str(self.secret_file)]
            with open(self.base_dir / f"n{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_for_leader(self, timeout_s: float = 30.0) -> int:
        """The leader's id, once one is elected and every node answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    log = (self.base_dir / f"n{i}.log").read_text(errors="replace")
                    raise RuntimeError(f"n{i} exited with {proc.returncode}:\n{log[-2000:]}")
            rows = asyncio.run(fetch_statuses_async(self.addresses, 0.5))
            leaders = [r["id"] for r in rows if r.get("role") == "leader"]
            if all(r.get("reachable") for r in rows) and leaders:
                return int(leaders[0])
            time.sleep(0.05)
        raise RuntimeError(f"no leader within {timeout_s}s")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the live nodes have used so far, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            if proc is None or proc.poll() is not None:
                continue
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ------------------------------------------------------------------ measurements


@dataclass
class Run:
    """One measurement: throughput, latency percentiles (ms), errors; or a failover time."""

    name: str
    in_flight: int
    summary: dict[str, Any] = field(default_factory=dict)


def sequential_puts(cluster: LocalCluster, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """The blocking Client, one put after another over rotating keys."""
    servers = cluster.addresses
    stats = OpStats()
    cpu_before = (time.process_time(), cluster.cpu_s())
    client = Client(list(servers), deadline=10.0)
    versions: dict[str, int] = {}
    prefix = f"seq/{os.getpid()}-{time.monotonic_ns()}"
    try:
        t0 = time.perf_counter()
        window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
        n = 0
        while (start := time.perf_counter()) < window_end:
            key = f"{prefix}/{n % 1000}"
            versions[key] = client.put(key, f"{n:x}-" + "x" * 96, versions.get(key, 0))
            end = time.perf_counter()
            if end >= window_start:
                stats.latencies_s.append(end - start)
            n += 1
    finally:
        client.close()
    summary = stats.summary(duration_s)
    summary.update(cpu_per_op(cluster, cpu_before, n))
    return summary


def cpu_per_op(cluster: LocalCluster, before: tuple[float, float], ops: int) -> dict[str, Any]:
    """CPU microseconds per operation of this (client) process and of all the nodes together.

    On a shared machine throughput swings with the load; CPU per operation
    much less, and 2 CPUs / (client + nodes) per op bounds the throughput of
    this 2-core box when idle.
    """
    client = (time.process_time() - before[0]) / ops * 1e6 if ops else None
    nodes = (cluster.cpu_s() - before[1]) / ops * 1e6 if ops else None
    return {"client_cpu_us_per_op": client, "nodes_cpu_us_per_op": nodes}


def bench(cluster: LocalCluster, config: BenchConfig) -> dict[str, Any]:
    before = (time.process_time(), cluster.cpu_s())
    runner = Bench(config)
    result = asyncio.run(runner.run())
    summary: dict[str, Any] = result.summary()[config.workload]
    summary.update(cpu_per_op(cluster, before, runner.completed))
    return summary


FAILOVER_KILL_AFTER_S = 1.0  # of measuring
FAILOVER_MIN_DURATION_S = 4.0


def failover(base_dir: Path, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Puts at 64 in flight on a fresh cluster; SIGKILL the leader a second into measuring."""
    duration_s = max(duration_s, FAILOVER_MIN_DURATION_S)
    cluster = LocalCluster(base_dir)
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        config = BenchConfig(
            servers=tuple(cluster.addresses),
            clients=FAILOVER_IN_FLIGHT,
            duration_s=duration_s,
            warmup_s=warmup_s,
            workload="put",
        )
        runner = Bench(config, timeline=True)
        kill_at: list[float] = []

        async def kill_leader() -> None:
            await asyncio.sleep(warmup_s + FAILOVER_KILL_AFTER_S)
            kill_at.append(time.perf_counter())
            # SIGKILL is synchronous enough: the process is gone before it runs again
            await asyncio.to_thread(cluster.kill, leader)

        async def main() -> Any:
            results = await asyncio.gather(runner.run(), kill_leader())
            return results[0]

        result = asyncio.run(main())
        seconds = failover_time_s(result.timeline, kill_at[0])
        out: dict[str, Any] = result.summary()["put"]
        out["failover_s"] = seconds
        out["killed"] = leader
        return out
    finally:
        cluster.stop()


def run_set(
    args: argparse.Namespace, rep: int, base: Path, log: Callable[[str], None]
) -> list[Run]:
    runs: list[Run] = []
    cluster = LocalCluster(base / f"rep{rep}")
    cluster.start()
    try:
        cluster.wait_for_leader()
        servers = tuple(cluster.addresses)
        log(f"rep {rep}: sequential puts")
        runs.append(Run("sequential put", 1, sequential_puts(cluster, args.duration, args.warmup)))
        for n in PUT_IN_FLIGHT:
            log(f"rep {rep}: puts at {n} in flight")
            config = BenchConfig(servers, n, args.duration, args.warmup, "put")
            runs.append(Run("put", n, bench(cluster, config)))
        for n in GET_IN_FLIGHT:
            log(f"rep {rep}: gets at {n} in flight")
            config = BenchConfig(servers, n, args.duration, args.warmup, "get")
            runs.append(Run("get", n, bench(cluster, config)))
    finally:
        cluster.stop()
    log(f"rep {rep}: failover")
    runs.append(
        Run("failover", FAILOVER_IN_FLIGHT, failover(base / f"fo{rep}", args.duration, 1.0))
    )
    return runs


# ----------------------------------------------------------------------- results


FIELDS = (
    "ops_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "client_cpu_us_per_op",
    "nodes_cpu_us_per_op",
)


def medians(all_runs: list[list[Run]]) -> list[dict[str, Any]]:
    """One row per benchmark: the median of each figure over the repetitions."""
    rows = []
    for position, first in enumerate(all_runs[0]):
        same = [runs[position].summary for runs in all_runs]
        row: dict[str, Any] = {"name": first.name, "in_flight": first.in_flight}
        keys = FIELDS + (("failover_s",) if first.name == "failover" else ())
        for key in keys:
            values = [s[key] for s in same if s.get(key) is not None]
            row[key] = statistics.median(values) if values else None
            row[f"{key}_runs"] = [s.get(key) for s in same]
        errors: dict[str, int] = {}
        for s in same:
            for kind, count in s.get("errors", {}).items():
                errors[kind] = errors.get(kind, 0) + count
        row["errors"] = errors
        rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], name: str, in_flight: int) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name and r["in_flight"] == in_flight)


def target_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, float | None, bool | None]]:
    measured = {
        "put_256_ops_per_s": _find(rows, "put", 256)["ops_per_s"],
        "sequential_put_p50_ms": _find(rows, "sequential put", 1)["p50_ms"],
        "get_64_ops_per_s": _find(rows, "get", 64)["ops_per_s"],
        "failover_s": _find(rows, "failover", FAILOVER_IN_FLIGHT)["failover_s"],
    }
    out = []
    for key, (op, goal) in TARGETS.items():
        value = measured[key]
        met = None
        if value is not None:
            met = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
        out.append((key, f"{op} {goal:g}", value, met))
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.{digits}f}"
    return str(value)


LABELS = {
    "sequential put": "sequential put (blocking Client)",
    "put": "put",
    "get": "get",
    "failover": "put during failover (SIGKILL leader)",
}


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# kvraft benchmark results",
        "",
        f"`{env['command']}` — {env['date']}, commit `{env['commit']}`",
        "",
        f"Machine: {env['cpus']} CPUs ({env['cpu']}), Python {env['python']}, {env['loop']}; "
        f"3-node cluster on loopback, fsync on (SQLite synchronous=FULL); "
        f"load average before: {env['load_before']}, after: {env['load_after']}. "
        f"Medians of {env['repeats']} runs of {env['duration_s']:g} s "
        f"(after {env['warmup_s']:g} s warm-up); latencies in ms, client side, retries included.",
        "",
        "| benchmark | in flight | ops/s | p50 | p95 | p99 | max | errors "
        "| CPU µs/op: client | nodes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append(
            f"| {LABELS[r['name']]} | {r['in_flight']} | {_fmt(r['ops_per_s'])} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | "
            f"{_fmt(r['max_ms'])} | {errors} | {_fmt(r['client_cpu_us_per_op'], 0)} | "
            f"{_fmt(r['nodes_cpu_us_per_op'], 0)} |"
        )
    fo = _find(rows, "failover", FAILOVER_IN_FLIGHT)
    runs = ", ".join(_fmt(v, 3) for v in fo["failover_s_runs"])
    lines += [
        "",
        f"Failover (SIGKILL the leader under {FAILOVER_IN_FLIGHT} puts in flight, until a put "
        f"sent after the kill succeeds): median **{_fmt(fo['failover_s'], 3)} s** (runs: {runs}).",
        "",
        "| target | goal | measured (median) | met |",
        "|---|---|---:|---|",
    ]
    for key, goal, value, met in target_rows(rows):
        verdict = "-" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {key} | {goal} | {_fmt(value, 3)} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Throughput and p99 against requests in flight; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    puts = [_find(rows, "put", n) for n in PUT_IN_FLIGHT]
    gets = [_find(rows, "get", n) for n in GET_IN_FLIGHT]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(PUT_IN_FLIGHT, [r["ops_per_s"] for r in puts], "o-", label="put")
    left.plot(GET_IN_FLIGHT, [r["ops_per_s"] for r in gets], "s--", label="get")
    left.axhline(10_000, ls=":", c="C0", label="put target (256 in flight)")
    left.axhline(11_500, ls=":", c="C1", label="get target (64 in flight)")
    left.set(xscale="log", xlabel="requests in flight", ylabel="ops/s", title="Throughput")
    left.set_xticks(PUT_IN_FLIGHT, [str(n) for n in PUT_IN_FLIGHT])
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(PUT_IN_FLIGHT, [r["p99_ms"] for r in puts], "o-", label="put p99")
    right.plot(PUT_IN_FLIGHT, [r["p50_ms"] for r in puts], "o--", label="put p50")
    right.plot(GET_IN_FLIGHT, [r["p99_ms"] for r in gets], "s--", label="get p99")
    right.set(xscale="log", yscale="log", xlabel="requests in flight", ylabel="ms")
    right.set(title="Latency")
    right.set_xticks(PUT_IN_FLIGHT, [str(n) for n in PUT_IN_FLIGHT])
    right.legend()
    fig.suptitle("kvraft, 3 nodes on loopback, fsync on (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def environment(args: argparse.Namespace, loop: str) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = "?"
    if shutil.which("git"):
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        commit = done.stdout.strip() or "?"
    argv = " ".join(sys.argv[1:])
    return {
        "command": f".venv/bin/python benchmarks/run.py {argv}".strip(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "loop": loop,
        "repeats": args.repeats,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' data and logs")
    args = parser.parse_args(argv)
    loop = install_event_loop_policy()
    env = environment(args, loop)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    base = Path(tempfile.mkdtemp(prefix="kvraft-bench-"))
    all_runs: list[list[Run]] = []
    try:
        for rep in range(1, args.repeats + 1):
            all_runs.append(run_set(args, rep, base, log))
    finally:
        if args.keep:
            log(f"data and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    env["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = medians(all_runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, env)
    (args.out / "results.md").write_text(text)
    raw = {
        "environment": env,
        "medians": rows,
        "runs": [[r.__dict__ for r in runs] for runs in all_runs],
        "targets": [
            {"target": k, "goal": g, "measured": v, "met": m} for k, g, v, m in target_rows(rows)
        ],
    }
    (args.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n")
    if not plot(rows, args.out / "throughput_latency.png"):
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
