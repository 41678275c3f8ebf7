"""The named key-value tests, on real server processes behind fault-injecting proxies.

Each runs alone with ``pytest -k NAME``. Every multi-client test records its
operations and ends with a linearizability check of the whole history.
"""

from __future__ import annotations

import random
import threading

import pytest

from kvraft.errors import NoKey, Unavailable
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable

from .kv_support import (
    RecordingClient,
    call_timeout_for,
    find_leader,
    own_key_puts,
    run_threads,
    shared_key_worker,
)

pytestmark = pytest.mark.slow

CHECK_TIMEOUT_S = 20.0


def clients_for(
    cluster: Cluster, history: History, n: int, **kwargs: object
) -> list[RecordingClient]:
    return [RecordingClient(cluster, history, **kwargs) for _ in range(n)]  # type: ignore[arg-type]


def close_all(clients: list[RecordingClient]) -> None:
    for c in clients:
        c.close()


def check_own_keys(client: RecordingClient, results: list) -> None:  # type: ignore[type-arg]
    """Each client's key holds exactly its last value and version."""
    for r in results:
        assert client.get(r.key) == (r.value, r.version), r


def test_basic_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A missing key raises NoKey; versioned puts create and update; gets see them."""
    cluster = make_cluster(3)
    history = History()
    c = RecordingClient(cluster, history)
    try:
        with pytest.raises(NoKey):
            c.get("k")
        assert c.put("k", "v1", 0) == 1
        assert c.get("k") == ("v1", 1)
        assert c.put("k", "v2", 1) == 2
        assert c.get("k") == ("v2", 2)
    finally:
        c.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_concurrent_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """5 clients, six versioned puts each on its own key, concurrently; all land."""
    cluster = make_cluster(5)
    history = History()
    clients = clients_for(cluster, history, 5)
    try:
        results = run_threads(
            [lambda c=c, i=i: own_key_puts(c, f"key{i}", 6) for i, c in enumerate(clients)]
        )
        check_own_keys(clients[0], results)
        assert all(r.version == 6 and r.maybes == 0 for r in results), results
    finally:
        close_all(clients)
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_leader_failure_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of the leader: puts and gets keep working on the survivors."""
    cluster = make_cluster(3)
    history = History()
    c = RecordingClient(cluster, history)
    try:
        assert c.put("k", "v1", 0) == 1
        leader = find_leader(cluster)
        cluster.kill(leader)
        assert c.put("k", "v2", 1) == 2
        assert c.get("k") == ("v2", 2)
        assert find_leader(cluster) != leader
    finally:
        c.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_persist_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Kill all five servers and restart them: value and version are intact."""
    cluster = make_cluster(5)
    history = History()
    c = RecordingClient(cluster, history)
    try:
        assert c.put("k", "v1", 0) == 1
        assert c.put("k", "v2", 1) == 2
        cluster.kill_all()
        cluster.restart_all()
        assert c.get("k") == ("v2", 2)
        assert c.put("k", "v3", 2) == 3
        assert c.get("k") == ("v3", 3)
    finally:
        c.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_partition_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The majority side serves; the minority cannot; after healing everyone sees the new value."""
    cluster = make_cluster(5)
    history = History()
    before = RecordingClient(cluster, history)
    try:
        assert before.put("k", "v1", 0) == 1
        cluster.partition([0, 1, 2], [3, 4])
        majority = RecordingClient(cluster, history)
        for i in (3, 4):
            cluster.block_client(i, majority.id)
        assert majority.put("k", "v2", 1) == 2
        assert majority.get("k") == ("v2", 2)
        # A client that can reach only the minority gets no answer, not a stale one.
        # Blocked at the majority too: a minority node's NotLeader can name the old
        # leader, n0, and the client follows a leader it is told of.
        minority = RecordingClient(
            cluster, history, servers=[cluster.address(3), cluster.address(4)], deadline=1.5
        )
        for i in (0, 1, 2):
            cluster.block_client(i, minority.id)
        with pytest.raises(Unavailable):
            minority.get("k")
        minority.close()
        majority.close()
        cluster.heal()
        assert before.get("k") == ("v2", 2)
    finally:
        before.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def unreliable_rounds(cluster: Cluster, nclients: int, seconds: float) -> None:
    history = History()
    clients = clients_for(cluster, history, nclients, call_timeout_s=call_timeout_for(cluster))
    stop = threading.Event()
    try:
        own = [lambda c=c, i=i: own_key_puts(c, f"own{i}", 5) for i, c in enumerate(clients)]
        shared = [
            lambda c=c, i=i: shared_key_worker(c, ["s0", "s1"], stop, seed=i)
            for i, c in enumerate(clients)
        ]
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        results = run_threads(own + shared)
        timer.cancel()
        stop.set()
        check_own_keys(clients[0], results[:nclients])
        for stats in results[nclients:]:
            assert not stats.errors, stats.errors
    finally:
        stop.set()
        close_all(clients)
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_unreliable_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Half the requests and a quarter of the replies lost: puts and gets stay correct."""
    cluster = make_cluster(5, network="lossy")
    unreliable_rounds(cluster, nclients=3, seconds=3.0)


def partition_churn(cluster: Cluster, stop: threading.Event, seed: int) -> None:
    """Disconnect and reconnect random servers for 100-300 ms each until ``stop``."""
    rng = random.Random(seed)
    while not stop.is_set():
        victims = rng.sample(range(cluster.n), rng.randint(1, (cluster.n - 1) // 2))
        for v in victims:
            cluster.disconnect(v)
        stop.wait(rng.uniform(0.1, 0.3))
        for v in victims:
            cluster.reconnect(v)
        stop.wait(rng.uniform(0.1, 0.3))


def random_partitions(cluster: Cluster, stop: threading.Event, seed: int) -> None:
    """Random two-way partitions (majority on one side) for 100-300 ms each until ``stop``."""
    rng = random.Random(seed)
    while not stop.is_set():
        ids = list(range(cluster.n))
        rng.shuffle(ids)
        cut = rng.randint(1, cluster.n - 1)
        cluster.partition(ids[:cut], ids[cut:])
        stop.wait(rng.uniform(0.1, 0.3))
        cluster.heal()
        stop.wait(rng.uniform(0.05, 0.15))


def rounds_with_faults(
    cluster: Cluster,
    *,
    nclients: int,
    rounds: int,
    round_s: float,
    fault: object = None,
    crash_all: bool = False,
    own_puts: int = 4,
) -> None:
    """Rounds of own-key and shared-key clients under ``fault``; maybe crash all after each."""
    history = History()
    clients = clients_for(cluster, history, nclients, call_timeout_s=call_timeout_for(cluster))
    expected: dict[str, tuple[str | None, int]] = {}
    try:
        for rnd in range(rounds):
            stop = threading.Event()
            fault_thread = None
            if fault is not None:
                fault_thread = threading.Thread(
                    target=fault, args=(cluster, stop, rnd), daemon=True
                )
                fault_thread.start()
            own = [
                lambda c=c, i=i, rnd=rnd: own_key_puts(c, f"own{i}", own_puts, tag=f"r{rnd}-")
                for i, c in enumerate(clients)
            ]
            shared = [
                lambda c=c, i=i, stop=stop, rnd=rnd: shared_key_worker(
                    c, ["s0", "s1"], stop, seed=rnd * 100 + i
                )
                for i, c in enumerate(clients)
            ]
            timer = threading.Timer(round_s, stop.set)
            timer.start()
            results = run_threads(own + shared)
            timer.cancel()
            stop.set()
            if fault_thread is not None:
                fault_thread.join()
            cluster.heal()
            for i in range(cluster.n):
                cluster.reconnect(i)
            for r in results[:nclients]:
                expected[r.key] = (r.value, r.version)
            for stats in results[nclients:]:
                assert not stats.errors, stats.errors
            if crash_all:
                cluster.kill_all()
                cluster.restart_all()
            for key, want in expected.items():
                assert clients[0].get(key) == want, key
    finally:
        close_all(clients)
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_many_partitions(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Servers repeatedly disconnected and reconnected while clients work, 3 rounds."""
    cluster = make_cluster(5)
    rounds_with_faults(cluster, nclients=3, rounds=3, round_s=1.5, fault=partition_churn)


def test_many_partitions_many_clients(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """As test_many_partitions, with 10 clients."""
    cluster = make_cluster(5)
    rounds_with_faults(cluster, nclients=10, rounds=3, round_s=1.5, fault=partition_churn)


def test_persist_concurrent_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """5 clients; all servers killed and restarted after every round."""
    cluster = make_cluster(5)
    rounds_with_faults(cluster, nclients=5, rounds=3, round_s=1.0, crash_all=True)


def test_persist_partition_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """3 clients; random partitions, and a kill/restart of all servers every round."""
    cluster = make_cluster(5)
    rounds_with_faults(
        cluster, nclients=3, rounds=3, round_s=1.5, fault=random_partitions, crash_all=True
    )


def test_partition_unreliable_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Random partitions on the lossy network."""
    cluster = make_cluster(5, network="lossy")
    rounds_with_faults(
        cluster, nclients=3, rounds=3, round_s=1.5, fault=random_partitions, own_puts=2
    )


def test_persist_unreliable_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Kill/restart of all servers every round, on the lossy network."""
    cluster = make_cluster(5, network="lossy")
    rounds_with_faults(cluster, nclients=3, rounds=3, round_s=1.0, crash_all=True, own_puts=2)


def test_persist_partition_unreliable_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Partitions, crashes of all servers and the lossy network together."""
    cluster = make_cluster(5, network="lossy")
    rounds_with_faults(
        cluster,
        nclients=3,
        rounds=3,
        round_s=1.5,
        fault=random_partitions,
        crash_all=True,
        own_puts=2,
    )


def test_unreliable_reordering_kvraft(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Replies held back for up to 2.2 s so messages arrive reordered; still linearizable."""
    cluster = make_cluster(5, network="reordering")
    unreliable_rounds(cluster, nclients=3, seconds=3.0)


# ----------------------------------------------------------------------- the lock


class CriticalSection:
    """What lock holders share: an in-section counter and the tokens seen, in order."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.tokens: list[int] = []
        self.entries = 0

    def enter(self, token: int) -> None:
        with self.mutex:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
            self.tokens.append(token)
            self.entries += 1

    def leave(self) -> None:
        with self.mutex:
            self.inside -= 1


def increment_under_lock(client: RecordingClient, key: str) -> None:
    """counter += 1 on a key only lock holders write; a Maybe is resolved by reading."""
    from kvraft.errors import Maybe

    try:
        value, version = client.get(key)
    except NoKey:
        value, version = "0", 0
    new = str(int(value) + 1)
    try:
        client.put(key, new, version)
    except Maybe:
        assert client.get(key) == (new, version + 1), "a lost increment under the lock"


def lock_workers(
    cluster: Cluster, nclients: int, acquisitions: int, *, fault: object = None
) -> None:
    from kvraft.client.lock import Lock

    history = History()
    clients = clients_for(cluster, history, nclients, call_timeout_s=call_timeout_for(cluster))
    section = CriticalSection()
    stop = threading.Event()

    def holder(c: RecordingClient) -> None:
        lock = Lock(c.client, "test")
        for _ in range(acquisitions):
            token = lock.acquire(timeout=60)
            section.enter(token)
            try:
                assert section.inside == 1, "two holders inside the critical section"
                increment_under_lock(c, "counter")
                assert section.inside == 1, "two holders inside the critical section"
            finally:
                section.leave()
            lock.release()

    fault_thread = None
    if fault is not None:
        fault_thread = threading.Thread(target=fault, args=(cluster, stop, 7), daemon=True)
        fault_thread.start()
    try:
        run_threads([lambda c=c: holder(c) for c in clients], timeout_s=180)
    finally:
        stop.set()
        if fault_thread is not None:
            fault_thread.join()
    try:
        total = nclients * acquisitions
        assert section.max_inside == 1
        assert section.entries == total
        assert clients[0].get("counter") == (str(total), total)
        assert section.tokens == sorted(set(section.tokens)), "fencing tokens must grow"
    finally:
        close_all(clients)
    assert_linearizable(history, CHECK_TIMEOUT_S)


@pytest.mark.parametrize("nclients", [1, 2, 5, 32])
def test_lock(make_cluster, nclients: int) -> None:  # type: ignore[no-untyped-def]
    """Mutual exclusion with 1, 2, 5 and 32 contending holders on a reliable network."""
    cluster = make_cluster(3)
    lock_workers(cluster, nclients, acquisitions=max(2, 12 // nclients))


@pytest.mark.parametrize("nclients", [1, 2, 8])
def test_lock_unreliable(make_cluster, nclients: int) -> None:  # type: ignore[no-untyped-def]
    """Mutual exclusion on the lossy network, where Maybe happens."""
    cluster = make_cluster(3, network="lossy")
    # Each acquisition is six operations, each a few lossy round trips.
    lock_workers(cluster, nclients, acquisitions=2 if nclients <= 2 else 1)


def kill_leader_once(cluster: Cluster, stop: threading.Event, seed: int) -> None:
    stop.wait(0.5)
    if not stop.is_set():
        leader = find_leader(cluster)
        cluster.kill(leader)
        stop.wait(1.0)
        cluster.restart(leader)


def crash_random_servers(cluster: Cluster, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        victim = rng.randrange(cluster.n)
        cluster.kill(victim)
        stop.wait(rng.uniform(0.2, 0.6))
        cluster.restart(victim)
        stop.wait(rng.uniform(0.2, 0.6))


def test_lock_leader_failure(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Mutual exclusion holds across a SIGKILL of the leader."""
    cluster = make_cluster(3)
    lock_workers(cluster, 4, acquisitions=5, fault=kill_leader_once)


def test_lock_server_crashes(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Mutual exclusion holds while random servers crash and restart."""
    cluster = make_cluster(5)
    lock_workers(cluster, 4, acquisitions=5, fault=crash_random_servers)
