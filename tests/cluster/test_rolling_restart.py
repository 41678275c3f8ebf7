"""A rolling restart of a 3-node cluster under 64 puts in flight loses no request.

Each node in turn, the leader last: SIGTERM (a leader hands its leadership to
its most up-to-date follower first), wait for it to exit, start it again on
its data dir, wait until it has caught up. Meanwhile 64 coroutines on 8
``AsyncClient``s put versioned values on keys of their own, one put at a
time each. Counted as failed: any put that raises (the clients retry
NotLeader, timeouts and lost connections inside; anything that reaches the
caller, Unavailable or Maybe included, is a failure). Measured: the failed
count (target 0), the longest put, and each hand-over as the old leader
logged it. The history is checked linearizable.

One round is in ``make test``; three rounds (every node restarted three
times) run under ``make stress``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import pytest

from kvraft.client.async_client import AsyncClient
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.support.rolling import put_own_key, terminate_reporting_handover

from .kv_support import find_leader, statuses

pytestmark = pytest.mark.slow

IN_FLIGHT = 64
CLIENTS = 8
# A put that takes longer than this reaches its caller as Unavailable (a failure).
PUT_DEADLINE_S = 30.0
# Generous: a restarted process under CPU contention (2 cores, other suites).
NODE_DEADLINE_S = 60.0


@dataclass
class Load:
    """The 64 putters' record: every put's latency, and every put that raised."""

    history: History = field(default_factory=History)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    async def run(self, servers: list[str]) -> None:
        clients = [
            AsyncClient(servers, deadline=PUT_DEADLINE_S, call_timeout_s=1.0)
            for _ in range(CLIENTS)
        ]
        try:
            await asyncio.gather(
                *(
                    put_own_key(
                        clients[i % CLIENTS],
                        f"k{i}",
                        self.history,
                        self.stop,
                        self.failures,
                        self._record,
                    )
                    for i in range(IN_FLIGHT)
                )
            )
        finally:
            for client in clients:
                await client.close()

    def _record(self, latency_s: float) -> None:
        self.latencies.append(latency_s)
        if len(self.latencies) >= IN_FLIGHT:
            self.ready.set()


def applied(cluster, node: int) -> int:  # type: ignore[no-untyped-def]
    row = statuses(cluster)[node]
    return int(row["applied_index"]) if row.get("reachable") else -1


def rolling_restart(cluster, rounds: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Restart every node ``rounds`` times, the leader last in each round; what each did."""
    events: list[dict[str, object]] = []
    for _ in range(rounds):
        leader = find_leader(cluster, NODE_DEADLINE_S)
        order = [i for i in range(cluster.n) if i != leader] + [leader]
        for node in order:
            was_leader = find_leader(cluster, NODE_DEADLINE_S) == node
            stopped = terminate_reporting_handover(cluster, node, NODE_DEADLINE_S)
            if was_leader:
                assert stopped.handed_to is not None, (
                    f"n{node} stopped as leader without a hand-over"
                )
            cluster.restart(node)
            target = max(applied(cluster, i) for i in range(cluster.n) if i != node)
            wait_until(
                lambda n=node, t=target: applied(cluster, n) >= t,
                NODE_DEADLINE_S,
                message=f"n{node} caught up to {target} after its restart",
            )
            events.append(
                {
                    "node": node,
                    "was_leader": was_leader,
                    "stop_s": stopped.stop_s,
                    "handed_to": stopped.handed_to,
                    "transfer_ms": stopped.transfer_ms,
                }
            )
    return events


def run_rolling_restart(make_cluster, rounds: int) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)
    find_leader(cluster, NODE_DEADLINE_S)
    load = Load()
    thread = threading.Thread(target=asyncio.run, args=(load.run(cluster.addresses),))
    thread.start()
    try:
        assert load.ready.wait(NODE_DEADLINE_S), "the putters did not get going"
        before = len(load.latencies)
        events = rolling_restart(cluster, rounds)
        during = len(load.latencies) - before
    finally:
        load.stop.set()
        thread.join(2 * PUT_DEADLINE_S)
    assert not thread.is_alive(), "a putter hung"

    report = {
        "rounds": rounds,
        "puts": len(load.latencies),
        "puts_during_restarts": during,
        "failed": len(load.failures),
        "longest_put_ms": round(max(load.latencies) * 1000),
        "p99_put_ms": round(sorted(load.latencies)[int(0.99 * len(load.latencies))] * 1000),
        "restarts": events,
    }
    print("rolling restart:", json.dumps(report))
    assert load.failures == [], load.failures
    assert during > IN_FLIGHT * cluster.n * rounds  # the load ran through every restart
    assert sum(1 for e in events if e["was_leader"]) >= rounds
    assert_linearizable(load.history, timeout_s=60)


def test_rolling_restart_under_64_puts_in_flight_fails_no_put(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Every node restarted once, the leader last (it hands over on SIGTERM): no put
    fails, and the history is linearizable.

    Reference: Raft thesis §3.10
    """
    run_rolling_restart(make_cluster, rounds=1)


@pytest.mark.stress
def test_rolling_restarts_three_rounds_fail_no_put(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """As above, three rounds in a row: every node restarted three times."""
    run_rolling_restart(make_cluster, rounds=3)
