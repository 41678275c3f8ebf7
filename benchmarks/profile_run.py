"""Where a put's time goes (issue 14, item 1): flame graphs and a per-request breakdown.

Three parts, on a fresh 3-node cluster of ``kvraft server`` processes on
loopback (fsync on, peers authenticated, metrics on every node):

1. Flame graphs (py-spy, SVG) of the leader, one follower and the load
   generator (``kvraft bench``, a process of its own) under sequential puts
   (1 in flight) and under 256 in flight, sampled at the same time over the
   same window (``--nonblocking``: py-spy does not stop the process to read it).
2. A per-request breakdown of a sequential put. The disk and the follower
   round trip come from the nodes' own metrics over a sequential run
   (``kvraft_disk_wal_fsync_duration_seconds``,
   ``kvraft_network_peer_round_trip_time_seconds``: sum / count), the CPU
   pieces (encode, decode, propose, apply, reply) from timing the real code
   paths in this process, and what is left of the client's median latency is
   the event loop's and the threads' share (wake-ups, hops, syscalls).
3. The same cluster's CPU per put (client and nodes) for both loads.

    .venv/bin/python benchmarks/profile_run.py [--duration 10] [--out benchmarks/results]

Writes ``OUT/profiles/{seq,256}-{leader,follower,client}.svg`` and
``OUT/profile.json``; the table in ``OUT/profile.md`` is written by hand from
it, with the load the machine was under.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

from run import LocalCluster, free_port  # benchmarks/run.py

from kvraft.kv_protocol import PutOk, PutOp
from kvraft.raft.config import RaftConfig
from kvraft.raft.core import RaftCore
from kvraft.raft.messages import AppendEntries, AppendEntriesReply, Entry
from kvraft.raft.ready import PersistentState
from kvraft.rpc.codec import Notify, Reply, Request, decode_envelope, encode_envelope
from kvraft.server.commands import encode_command
from kvraft.server.kvstore import KVStore
from kvraft.server.rsm import RSM

RESULTS = Path(__file__).parent / "results"
KVRAFT = [sys.executable, "-m", "kvraft"]
VALUE = "x" * 100


class MetricsCluster(LocalCluster):
    """LocalCluster with ``--metrics-listen`` on every node."""

    def __init__(self, base_dir: Path, n: int = 3) -> None:
        super().__init__(base_dir, n)
        self.metrics = [f"127.0.0.1:{free_port()}" for _ in range(n)]

    def start(self) -> None:
        peers = ",".join(f"{i}={a}" for i, a in enumerate(self.addresses))
        for i, address in enumerate(self.addresses):
            cmd = [*KVRAFT, "--log-level", "warning", "server", "--id", str(i)]
            cmd += ["--listen", address, "--peers", peers]
            cmd += ["--data-dir", str(self.base_dir / f"n{i}")]
            cmd += ["--peer-secret-file", str(self.secret_file)]
            cmd += ["--metrics-listen", self.metrics[i]]
            with open(self.base_dir / f"n{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def pid(self, i: int) -> int:
        proc = self.procs[i]
        assert proc is not None
        return proc.pid

    def scrape(self, i: int) -> dict[str, float]:
        """Sum and count of the fsync and peer round-trip histograms of node ``i``."""
        text = urllib.request.urlopen(f"http://{self.metrics[i]}/metrics", timeout=5).read()
        out: dict[str, float] = {}
        for line in text.decode().splitlines():
            for name in (
                "kvraft_disk_wal_fsync_duration_seconds",
                "kvraft_network_peer_round_trip_time_seconds",
            ):
                for suffix in ("_sum", "_count"):
                    if line.startswith(name + suffix):
                        key = name + suffix
                        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


def bench_command(cluster: LocalCluster, clients: int, duration_s: float, path: Path) -> list[str]:
    return [
        *KVRAFT,
        "bench",
        "--servers",
        ",".join(cluster.addresses),
        "--clients",
        str(clients),
        "--duration",
        str(duration_s),
        "--warmup",
        "1",
        "--workload",
        "put",
        "--keys",
        str(max(1000, clients)),
        "--no-progress",
        "--json",
        str(path),
    ]


def flame_graphs(
    cluster: MetricsCluster, leader: int, clients: int, duration_s: float, out: Path, name: str
) -> dict[str, Any]:
    """Run the bench while py-spy samples the leader, a follower and the bench itself."""
    follower = next(i for i in range(3) if i != leader)
    result = out.parent / f"bench-{name}.json"
    cpu_before = cluster.cpu_s()
    bench = subprocess.Popen(bench_command(cluster, clients, duration_s, result))
    time.sleep(1.2)  # past the warm-up
    spies = []
    for role, pid in (
        ("leader", cluster.pid(leader)),
        ("follower", cluster.pid(follower)),
        ("client", bench.pid),
    ):
        svg = out / f"{name}-{role}.svg"
        spies.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(duration_s - 1)),
                    "--rate",
                    "99",
                    "--nonblocking",
                    "--format",
                    "flamegraph",
                    "-o",
                    str(svg),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
    bench.wait()
    for spy in spies:
        spy.wait(60)
    summary = json.loads(result.read_text())
    result.unlink()
    summary["nodes_cpu_s"] = cluster.cpu_s() - cpu_before
    return summary


def sequential_breakdown(cluster: MetricsCluster, leader: int, duration_s: float) -> dict[str, Any]:
    """A sequential put run with the nodes' fsync and round-trip metrics over it."""
    before = [cluster.scrape(i) for i in range(3)]
    path = Path(tempfile.mkdtemp()) / "seq.json"
    subprocess.run(bench_command(cluster, 1, duration_s, path), check=True)
    after = [cluster.scrape(i) for i in range(3)]
    bench = json.loads(path.read_text())
    put = bench["results"]["put"] if "results" in bench else bench
    fsync = "kvraft_disk_wal_fsync_duration_seconds"
    rtt = "kvraft_network_peer_round_trip_time_seconds"

    def mean_ms(i: int, name: str) -> float | None:
        count = after[i].get(name + "_count", 0) - before[i].get(name + "_count", 0)
        total = after[i].get(name + "_sum", 0) - before[i].get(name + "_sum", 0)
        return total / count * 1000 if count else None

    followers = [i for i in range(3) if i != leader]
    return {
        "bench": put,
        "leader_fsync_ms": mean_ms(leader, fsync),
        "follower_fsync_ms": [mean_ms(i, fsync) for i in followers],
        "peer_round_trip_ms": mean_ms(leader, rtt),
    }


def cpu_pieces() -> dict[str, float]:
    """Microseconds of the CPU steps on a put's path, timed on the real code."""
    op = PutOp("bench/key/1", VALUE, 3, "client-0123456789abcdef", 42, 41)
    request = encode_envelope(Request(42, "put", "c:client-0123456789abcdef", op))
    command = encode_command(op)
    entry = Entry(term=2, index=10, command=command)
    append = AppendEntries(
        src=0,
        dst=1,
        term=2,
        prev_log_index=9,
        prev_log_term=2,
        entries=(entry,),
        leader_commit=9,
    )
    append_frame = encode_envelope(Notify("raft", "p0", append))
    ack = AppendEntriesReply(
        src=1, dst=0, term=2, success=True, match_index=10, conflict_index=0, conflict_term=0
    )
    ack_frame = encode_envelope(Notify("raft", "p1", ack))
    reply = encode_envelope(Reply(42, None, PutOk(4, 100)))

    core = RaftCore(RaftConfig(node_id=0, peers=(0,)), PersistentState())
    core.campaign()
    core.advance(core.ready())

    def propose() -> None:
        core.propose(command)
        core.advance(core.ready())

    rsm = RSM(0, KVStore(), op_timeout_s=1.0)
    counter = iter(range(10**9))

    def apply() -> None:
        n = next(counter)
        put = PutOp(f"k{n}", VALUE, 0, "client-0123456789abcdef", n + 1, n)
        rsm.apply(Entry(term=1, index=n + 1, command=encode_command(put)))

    steps = {
        "client: encode the request": lambda: encode_envelope(
            Request(42, "put", "c:client-0123456789abcdef", op)
        ),
        "leader: decode the request": lambda: decode_envelope(request),
        "leader: encode the command": lambda: encode_command(op),
        "leader: propose + Ready (core)": propose,
        "leader: encode AppendEntries": lambda: encode_envelope(Notify("raft", "p0", append)),
        "follower: decode AppendEntries": lambda: decode_envelope(append_frame),
        "follower: encode the ack": lambda: encode_envelope(Notify("raft", "p1", ack)),
        "leader: decode the ack": lambda: decode_envelope(ack_frame),
        "leader: apply (decode command, sessions, store)": apply,
        "leader: encode the reply": lambda: encode_envelope(Reply(42, None, PutOk(4, 100))),
        "client: decode the reply": lambda: decode_envelope(reply),
    }
    out = {}
    for name, fn in steps.items():
        number = 2000
        best = min(timeit.repeat(fn, number=number, repeat=5))
        out[name] = best / number * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    profiles = args.out / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "loadavg_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="kvraft-profile-") as tmp:
        cluster = MetricsCluster(Path(tmp))
        cluster.start()
        try:
            leader = cluster.wait_for_leader()
            report["leader"] = leader
            report["breakdown"] = sequential_breakdown(cluster, leader, args.duration)
            for name, clients in (("seq", 1), ("256", 256)):
                report[f"flame_{name}"] = flame_graphs(
                    cluster, leader, clients, args.duration, profiles, name
                )
        finally:
            cluster.stop()
    report["cpu_pieces_us"] = cpu_pieces()
    report["loadavg_after"] = os.getloadavg()
    (args.out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
