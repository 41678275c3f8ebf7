"""Read-index reads (``read="index"``) on real server processes, Jepsen-style.

Every test records what its clients saw and ends with a linearizability check
of the whole history: index reads mixed with log writes (and log reads) under
partitions, SIGKILL of the leader and SIGSTOP pauses of the leader, the fault
that breaks lease-based reads. The long variant is marked stress.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest

from kvraft.errors import NoKey, Unavailable, WrongLeader
from kvraft.rpc.codec import client_sender
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until

from .kv_support import (
    RecordingClient,
    find_leader,
    own_key_puts,
    run_threads,
    shared_key_worker,
    statuses,
)

pytestmark = pytest.mark.slow

CHECK_TIMEOUT_S = 30.0
# Longer than two election timeouts (150-300 ms each by default) and the
# check-quorum period: the others elect a new leader while this one sleeps.
PAUSE_S = 1.5


def index_clients(cluster: Cluster, history: History, n: int) -> list[RecordingClient]:
    return [RecordingClient(cluster, history, read="index", call_timeout_s=0.3) for _ in range(n)]


def new_leader_elected(cluster: Cluster, old: int) -> int:
    """Wait until a live server other than ``old`` leads; its id."""
    found: list[int] = []

    def elected() -> bool:
        rows = [r for r in statuses(cluster) if r.get("reachable") and r["id"] != old]
        found[:] = [int(r["id"]) for r in rows if r.get("role") == "leader"]
        return bool(found)

    wait_until(elected, 10.0, message=f"a leader other than n{old}")
    return found[0]


def test_index_reads_see_every_completed_write(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A missing key is NoKey, then each put is seen by the next index get and range,
    per call and per client, and by `kvraft get --read index`."""
    cluster = make_cluster(3)
    history = History()
    c = RecordingClient(cluster, history, read="index")
    try:
        with pytest.raises(NoKey):
            c.get("k")
        for version in range(3):
            assert c.put("k", f"v{version + 1}", version) == version + 1
            assert c.get("k") == (f"v{version + 1}", version + 1)
        assert c.client.get("k", read="log") == ("v3", 3)
        assert [kv.key for kv in c.client.range(prefix="", read="index").kvs] == ["k"]
    finally:
        c.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)
    cli = subprocess.run(
        [sys.executable, "-m", "kvraft", "get", "k", "--read", "index"],
        env={"KVRAFT_SERVERS": ",".join(cluster.addresses), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == "v3\t(version 3)"


def test_index_reads_under_partition(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The leader cut off into a minority answers no index read (not a stale one); the
    majority's new leader answers with the write made there; after healing all agree."""
    cluster = make_cluster(5)
    history = History()
    before = RecordingClient(cluster, history, read="index")
    try:
        assert before.put("k", "v1", 0) == 1
        assert before.get("k") == ("v1", 1)
        old = find_leader(cluster)
        minority_ids = [old, (old + 1) % 5]
        majority_ids = [i for i in range(5) if i not in minority_ids]
        cluster.partition(minority_ids, majority_ids)
        minority = RecordingClient(
            cluster,
            history,
            servers=[cluster.address(i) for i in minority_ids],
            deadline=1.5,
            call_timeout_s=0.3,
            read="index",
        )
        majority = RecordingClient(
            cluster, history, servers=[cluster.address(i) for i in majority_ids], read="index"
        )
        assert majority.put("k", "v2", 1) == 2
        assert majority.get("k") == ("v2", 2)
        # The old leader may still think it leads, but it cannot confirm a round.
        with pytest.raises(Unavailable):
            minority.get("k")
        minority.close()
        majority.close()
        cluster.heal()
        assert before.get("k") == ("v2", 2)
    finally:
        before.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_a_paused_deposed_leader_answers_no_stale_index_read(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP the leader; the others elect a new one and take a write; the old leader
    is cut off from them, so on SIGCONT nothing tells it it was deposed, and a read sent
    to it while paused waits in its socket. It must not answer from its old state: the
    read fails or sees the write (etcd #20418's scenario)."""
    cluster = make_cluster(3)
    history = History()
    writer = RecordingClient(cluster, history)
    try:
        assert writer.put("k", "v1", 0) == 1
        old = find_leader(cluster)
        stale_reader = RecordingClient(
            cluster,
            history,
            servers=[cluster.address(old)],
            deadline=3.0,
            call_timeout_s=2.0,
            read="index",
        )
        assert stale_reader.get("k") == ("v1", 1)  # it led, and its rounds were confirmed
        cluster.pause(old)
        # Only its clients reach it from now on: no message of the new term is
        # waiting in its sockets when it wakes up to tell it it was deposed.
        cluster.partition([old], [i for i in range(3) if i != old])
        try:
            new_leader_elected(cluster, old)
            assert writer.put("k", "v2", 1) == 2  # completes before the read is sent
            outcome: list[object] = []

            def read() -> None:
                try:
                    outcome.append(stale_reader.get("k"))
                except (Unavailable, WrongLeader) as exc:
                    outcome.append(exc)

            def index_reads_delivered() -> int:
                sender = client_sender(stale_reader.id)
                stats = cluster.stats(old)
                return stats.total("request", method="get.index", sender=sender).delivered

            delivered_before = index_reads_delivered()
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            # The read must reach the paused leader's socket before it wakes up.
            wait_until(
                lambda: index_reads_delivered() > delivered_before,
                10,
                message=f"the index read delivered to the paused n{old}",
            )
        finally:
            cluster.resume(old)
        reader.join(10)
        assert not reader.is_alive()
        assert outcome and outcome[0] != ("v1", 1), outcome
        stale_reader.close()
        cluster.heal()
    finally:
        writer.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def nemesis_run(cluster: Cluster, seconds: float, seed: int) -> None:
    """Writers on own and shared keys, index readers, log readers; meanwhile the leader is
    killed and restarted, paused and resumed, and cut off, in turn; then a linearizability
    check of everything every client saw."""
    rng = random.Random(seed)
    history = History()
    writers = [RecordingClient(cluster, history, call_timeout_s=0.3) for _ in range(2)]
    readers = index_clients(cluster, history, 3)
    stop = threading.Event()

    def read_loop(client: RecordingClient, keys: list[str]) -> int:
        reads = 0
        while not stop.is_set():
            try:
                client.get(rng.choice(keys))
                reads += 1
            except NoKey:
                reads += 1
            except Unavailable:
                pass
        return reads

    def nemesis() -> int:
        faults = 0
        while not stop.is_set():
            time.sleep(0.3)
            leader = find_leader(cluster)
            fault = ("kill", "pause", "partition")[faults % 3]
            if fault == "kill":
                cluster.kill(leader)
                time.sleep(0.5)
                cluster.restart(leader)
            elif fault == "pause":
                cluster.pause(leader)
                time.sleep(PAUSE_S)
                cluster.resume(leader)
            else:
                cluster.partition([leader], [i for i in range(cluster.n) if i != leader])
                time.sleep(1.0)
                cluster.heal()
            faults += 1
        return faults

    def write_loop(client: RecordingClient, key: str) -> int:
        puts = 0
        while not stop.is_set():
            try:
                own_key_puts(client, key, 5, tag=f"r{puts}-")
                puts += 5
            except Unavailable:
                pass
        return puts

    keys = ["own0", "own1", "s0", "s1"]
    try:
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        results = run_threads(
            [
                lambda: shared_key_worker(readers[0], ["s0", "s1"], stop, seed=seed),
                lambda: read_loop(readers[1], keys),
                lambda: read_loop(readers[2], keys),
                nemesis,
                lambda: write_loop(writers[0], "own0"),
                lambda: write_loop(writers[1], "own1"),
            ],
            timeout_s=seconds + 90,
        )
        timer.cancel()
    finally:
        stop.set()
        for i in range(cluster.n):
            cluster.resume(i)
        for c in writers + readers:
            c.close()
    shared, reads_a, reads_b, faults, puts_a, puts_b = results
    assert faults >= 3, faults  # each kind of fault happened
    assert shared.gets > 0 and reads_a > 0 and reads_b > 0 and puts_a > 0 and puts_b > 0
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_index_reads_linearizable_under_kills_pauses_and_partitions(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """About 12 s of leader kills, SIGSTOP pauses and isolation under mixed load."""
    nemesis_run(make_cluster(3), seconds=12.0, seed=1)


@pytest.mark.stress
@pytest.mark.parametrize("seed", range(3))
def test_index_reads_linearizable_under_faults_stress(make_cluster, seed: int) -> None:  # type: ignore[no-untyped-def]
    """A minute of the same faults per seed, on five servers."""
    nemesis_run(make_cluster(5), seconds=60.0, seed=seed)
