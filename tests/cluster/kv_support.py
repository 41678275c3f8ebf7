"""Workers and probes shared by the real-process key-value tests.

Every worker records what it does in a :class:`History`, so each test can end
with a linearizability check of everything its clients saw.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvraft.client.admin import fetch_statuses
from kvraft.client.async_client import ReadMode
from kvraft.client.client import Client
from kvraft.errors import Maybe, NoKey, Unavailable, VersionMismatch
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.waiting import wait_until

# Generous per-test ceiling on one operation: a majority is always up in these
# tests, so an operation that takes this long is a liveness bug, not bad luck.
OP_DEADLINE_S = 30.0


def call_timeout_for(cluster: Cluster) -> float:
    """The clients' per-call timeout for this cluster's network.

    On the lossy network three of four calls get no answer at all, so the
    time an operation takes is mostly timeouts; a commit there takes tens of
    milliseconds, so 150 ms is ample and halves the run time. Elsewhere 300 ms.
    """
    return 0.15 if cluster.control.profile.request_drop >= 0.5 else 0.3


def statuses(cluster: Cluster) -> list[dict[str, Any]]:
    """Status of every server, asked on the private ports (no proxy faults)."""
    return fetch_statuses(cluster.private_addresses, 0.5)


def find_leader(cluster: Cluster, timeout_s: float = 10.0) -> int:
    """The id of the leader of the highest term among live servers (waits for one)."""

    def leader() -> int | None:
        rows = [r for r in statuses(cluster) if r.get("reachable")]
        leaders = [r for r in rows if r.get("role") == "leader"]
        if not leaders:
            return None
        best = max(leaders, key=lambda r: r["term"])
        return int(best["id"])

    found = wait_until(lambda: leader() is not None, timeout_s, message="a leader")
    assert found
    result = leader()
    assert result is not None
    return result


class RecordingClient:
    """A Client whose every get and put goes into a shared History."""

    def __init__(
        self,
        cluster: Cluster,
        history: History,
        *,
        servers: list[str] | None = None,
        deadline: float | None = OP_DEADLINE_S,
        call_timeout_s: float = 0.5,
        client_id: str | None = None,
        read: ReadMode = "log",
    ) -> None:
        self.client = Client(
            servers or cluster.addresses,
            deadline=deadline,
            call_timeout_s=call_timeout_s,
            client_id=client_id,
            read=read,
        )
        self.history = history
        self.id = self.client.client_id

    def get(self, key: str) -> tuple[str, int]:
        return self.history.record_get(self.id, key, lambda: self.client.get(key))

    def put(self, key: str, value: str, version: int) -> int:
        return self.history.record_put(
            self.id, key, value, version, lambda: self.client.put(key, value, version)
        )

    def close(self) -> None:
        self.client.close()


@dataclass
class OwnKeyResult:
    key: str
    value: str | None = None
    version: int = 0
    puts: int = 0
    maybes: int = 0


def own_key_puts(client: RecordingClient, key: str, count: int, tag: str = "") -> OwnKeyResult:
    """``count`` versioned puts on a key only this client writes; Maybe resolved by reading.

    Returns the last value and version, which the key must hold afterwards.
    """
    result = OwnKeyResult(key)
    with contextlib.suppress(NoKey):
        result.value, result.version = client.get(key)
    for i in range(count):
        value = f"{key}:{tag}{i}"
        while True:
            try:
                result.version = client.put(key, value, result.version)
                break
            except Maybe:
                result.maybes += 1
                got, version = client.get(key)
                if got == value:  # the resent put did apply
                    result.version = version
                    break
                result.version = version  # it did not: try again at the current version
        result.value = value
        result.puts += 1
    return result


@dataclass
class SharedKeyStats:
    gets: int = 0
    puts_ok: int = 0
    mismatches: int = 0
    maybes: int = 0
    no_keys: int = 0
    errors: list[str] = field(default_factory=list)


def shared_key_worker(
    client: RecordingClient, keys: list[str], stop: threading.Event, seed: int
) -> SharedKeyStats:
    """Read-modify-write races on shared keys until ``stop``; every outcome is legal."""
    rng = random.Random(seed)
    stats = SharedKeyStats()
    while not stop.is_set():
        key = rng.choice(keys)
        try:
            try:
                _value, version = client.get(key)
                stats.gets += 1
            except NoKey:
                stats.no_keys += 1
                version = 0
            try:
                client.put(key, f"{client.id[:6]}-{rng.randrange(10**6)}", version)
                stats.puts_ok += 1
            except VersionMismatch:
                stats.mismatches += 1
            except Maybe:
                stats.maybes += 1
            except NoKey:
                stats.no_keys += 1
        except Unavailable as exc:
            stats.errors.append(str(exc))
            return stats
    return stats


def run_threads(fns: list[Callable[[], Any]], timeout_s: float = 120.0) -> list[Any]:
    """Run each fn in a thread; return their results; re-raise the first exception."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        assert not t.is_alive(), f"a client thread did not finish within {timeout_s}s"
    if errors:
        raise errors[0]
    return results


class BackgroundPutters:
    """Clients putting on their own keys in threads, ``batch`` puts a round, until finish().

    ``puts[i]`` counts client i's completed puts; every outcome is recorded in
    ``history`` for a linearizability check. finish() joins the threads, closes
    the clients and fails if any thread hung or raised.
    """

    def __init__(self, cluster: Cluster, history: History, n: int = 2, batch: int = 1) -> None:
        self.clients = [RecordingClient(cluster, history) for _ in range(n)]
        self.batch = batch
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.puts = [0] * n
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)
        ]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        try:
            round_ = 0
            while not self.stop.is_set():
                own_key_puts(self.clients[i], f"w{i}", self.batch, tag=f"r{round_}-")
                self.puts[i] += self.batch
                round_ += 1
        except BaseException as exc:
            self.errors.append(exc)

    def total(self) -> int:
        return sum(self.puts)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a client thread hung"
        for c in self.clients:
            c.close()
        assert not self.errors, self.errors
