"""The metrics a node exposes: read from its counters at scrape time, or observed where
a duration has no counter; and the pure parts (health, peer round trips, ports)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvraft.client.async_client import AsyncClient
from kvraft.errors import NoKey
from kvraft.local_cluster import cluster_metrics_base_port
from kvraft.raft.messages import AppendEntries, AppendEntriesReply, Entry
from kvraft.raft.ready import HardState
from kvraft.server.health import Health, judge, stall_bound_s
from kvraft.server.metrics import FSYNC_BUCKETS_S
from kvraft.server.options import ServerOptions
from kvraft.server.peer_rtt import PeerRoundTrips
from kvraft.server.process import Server
from kvraft.storage.sqlite import SqliteStorage
from kvraft.testing import processes
from tests.support.metrics_docs import documented_metrics, documented_name_of

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def http_get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def wait_for(predicate: object, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# ----------------------------------------------------------- a one-node server


def test_a_one_node_server_serves_its_counters_and_health(tmp_path: Path) -> None:
    """A one-node cluster leads itself: has_leader and is_leader 1, one leader change;
    three puts and a get of a missing key commit and apply four entries past
    the leader's no-op, appear by method and result, cost fsyncs, and move
    bytes; /health answers 200 and the page is Prometheus text."""
    rpc_port, metrics_port = processes.reserve_port(), processes.reserve_port()
    address = f"127.0.0.1:{rpc_port}"
    metrics_address = f"127.0.0.1:{metrics_port}"
    options = ServerOptions(
        node_id=0,
        listen=address,
        peers={0: address},
        data_dir=tmp_path,
        insecure_peers=True,
        metrics_listen=metrics_address,
    )

    async def scenario() -> tuple[Samples, Samples, tuple[int, bytes], str]:
        server = Server.open(options)
        await server.start()
        try:
            core = server.node.core
            # Leader, and its no-op of the term committed: the count below starts after it.
            await wait_for(lambda: server.node.get_state()[1] and core.commit_index > 0)
            status, headers, body = await http_get(metrics_address, "/metrics")
            assert status == 200
            before = samples(body.decode())
            async with AsyncClient([address], deadline=20) as client:
                for i in range(3):
                    await client.put(f"k{i}", "v", 0)
                with pytest.raises(NoKey):
                    await client.get("missing")
            _, _, body = await http_get(metrics_address, "/metrics?ignored=1")
            after = samples(body.decode())
            health_status, _, health = await http_get(metrics_address, "/health")
            return before, after, (health_status, health), headers["Content-Type"]
        finally:
            await server.stop()

    try:
        before, after, health, content_type = asyncio.run(scenario())
    finally:
        processes.release_ports([rpc_port, metrics_port])
    assert content_type.startswith("text/plain; version=0.0.4")
    assert after["kvraft_server_has_leader", ()] == 1
    assert after["kvraft_server_is_leader", ()] == 1
    assert after["kvraft_server_leader_changes_seen_total", ()] == 1
    assert after["kvraft_server_info", (("node_id", "0"),)] == 1
    committed = "kvraft_server_proposals_committed_total", ()
    assert after[committed] == before[committed] + 4
    assert after["kvraft_server_proposals_applied_total", ()] == after[committed]
    assert after["kvraft_server_proposals_pending", ()] == 0
    assert after["kvraft_server_proposals_failed_total", ()] == 0
    requests = "kvraft_server_client_requests_total"
    assert after[requests, (("method", "put"), ("result", "ok"))] == 3
    assert after[requests, (("method", "get"), ("result", "no_key"))] == 1
    fsyncs = "kvraft_disk_wal_fsync_duration_seconds_count", ()
    assert after[fsyncs] > before[fsyncs] > 0
    assert after["kvraft_network_client_received_bytes_total", ()] > 0
    assert after["kvraft_network_client_sent_bytes_total", ()] > 0
    assert after["process_open_fds", ()] > 0
    assert health == (200, b'{"health": "true"}\n')
    documented = documented_metrics()
    exported = {name for name, _ in after if name.startswith("kvraft_")}
    assert {n for n in exported if documented_name_of(n, documented) is None} == set()


def test_the_dashboard_graphs_only_documented_metrics() -> None:
    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy/grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bkvraft_[a-z_]+", e)}
    documented = documented_metrics()
    assert len(used) >= 10
    assert {n for n in used if documented_name_of(n, documented) is None} == set()
    for wanted in (
        "kvraft_server_has_leader",
        "kvraft_server_leader_changes_seen_total",
        "kvraft_server_proposals_failed_total",
        "kvraft_disk_wal_fsync_duration_seconds_bucket",
        "kvraft_server_client_requests_total",
        "kvraft_network_peer_round_trip_time_seconds_bucket",
        "kvraft_network_peer_sent_bytes_total",
    ):
        assert wanted in used


# ---------------------------------------------------------------- fsync timing


def test_the_fsync_hook_sees_one_duration_per_save_and_none_for_an_empty_one(
    tmp_path: Path,
) -> None:
    store = SqliteStorage.open(tmp_path, cluster_id="c", node_id=0)
    seen: list[float] = []
    store.on_commit_s = seen.append
    try:
        entries = [Entry(term=1, index=i, command=b"x") for i in (1, 2, 3)]
        store.save(HardState(current_term=1, voted_for=0), entries, None)  # one Ready
        store.save(None, [], None)  # nothing to persist: no transaction, no fsync
        store.save(None, [Entry(term=1, index=4, command=b"y")], None)
    finally:
        store.close()
    assert len(seen) == 2 and all(0 < s < 10 for s in seen)


def test_fsync_buckets_start_near_50_microseconds_and_reach_seconds() -> None:
    assert FSYNC_BUCKETS_S[0] == pytest.approx(50e-6)
    assert any(b < 0.3e-3 < FSYNC_BUCKETS_S[i + 1] for i, b in enumerate(FSYNC_BUCKETS_S[:-1]))
    assert FSYNC_BUCKETS_S[-1] > 1.0


# ----------------------------------------------------------------------- health


def test_no_leader_is_unhealthy() -> None:
    verdict = judge(
        leader_id=None, applied_index=5, commit_index=5, applied_at_s=0, now_s=1, stall_s=1
    )
    assert verdict == Health(False, "no leader")


def test_an_applied_index_behind_the_commit_for_the_bound_is_stalled() -> None:
    at_bound = judge(
        leader_id=1, applied_index=7, commit_index=9, applied_at_s=10.0, now_s=12.0, stall_s=2.0
    )
    assert not at_bound.healthy
    assert at_bound.reason == "applied index stalled at 7 since 2.0 s ago (commit index 9)"
    under = judge(
        leader_id=1, applied_index=7, commit_index=9, applied_at_s=10.0, now_s=11.99, stall_s=2.0
    )
    assert under == Health(True)


def test_an_applied_index_at_the_commit_is_healthy_however_old() -> None:
    idle = judge(
        leader_id=1, applied_index=9, commit_index=9, applied_at_s=0.0, now_s=1e6, stall_s=2.0
    )
    assert idle == Health(True)


def test_the_stall_bound_is_three_of_the_longest_election_timeouts() -> None:
    assert stall_bound_s(15, 0.01) == pytest.approx(0.9)


# -------------------------------------------------------------- peer round trips


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def append(dst: int, prev: int, n: int) -> AppendEntries:
    entries = tuple(Entry(term=1, index=prev + 1 + i, command=b"c") for i in range(n))
    return AppendEntries(
        src=0, dst=dst, term=1, prev_log_index=prev, prev_log_term=1, entries=entries,
        leader_commit=prev,
    )  # fmt: skip


def reply(src: int, match: int, *, success: bool = True) -> AppendEntriesReply:
    return AppendEntriesReply(
        src=src, dst=0, term=1, success=success, match_index=match, conflict_index=0,
        conflict_term=0,
    )  # fmt: skip


def round_trips(clock: FakeClock) -> tuple[PeerRoundTrips, list[tuple[int, float]]]:
    seen: list[tuple[int, float]] = []
    return PeerRoundTrips(lambda p, s: seen.append((p, s)), lost_s=1.0, clock=clock), seen


def test_a_probe_is_timed_from_its_append_to_the_reply_that_reaches_its_index() -> None:
    clock = FakeClock()
    rtt, seen = round_trips(clock)
    rtt.sent(append(1, prev=10, n=5))  # probe: up to 15
    clock.now += 0.001
    rtt.sent(append(1, prev=15, n=5))  # a probe is out: not a new one
    clock.now += 0.001
    rtt.replied(reply(1, match=12))  # an earlier append's answer: not ours
    assert seen == []
    clock.now += 0.001
    rtt.replied(reply(1, match=15))
    assert seen == [(1, pytest.approx(0.003))]
    rtt.replied(reply(1, match=20))  # no probe out any more
    assert len(seen) == 1


def test_a_refusal_answers_a_probe_and_peers_are_timed_apart() -> None:
    clock = FakeClock()
    rtt, seen = round_trips(clock)
    rtt.sent(append(1, prev=10, n=0))
    rtt.sent(append(2, prev=10, n=0))
    clock.now += 0.002
    rtt.replied(reply(2, match=0, success=False))
    clock.now += 0.002
    rtt.replied(reply(1, match=10))
    assert seen == [(2, pytest.approx(0.002)), (1, pytest.approx(0.004))]


def test_a_probe_unanswered_for_lost_s_is_replaced_unobserved() -> None:
    clock = FakeClock()
    rtt, seen = round_trips(clock)
    rtt.sent(append(1, prev=10, n=1))
    clock.now += 0.999  # just under lost_s: still the probe
    rtt.sent(append(1, prev=11, n=1))
    clock.now += 0.001  # at lost_s: replaced by the next append
    rtt.sent(append(1, prev=12, n=1))
    clock.now += 0.005
    rtt.replied(reply(1, match=13))
    assert seen == [(1, pytest.approx(0.005))]


# ------------------------------------------------------- kvraft cluster's ports


def test_cluster_metrics_ports_default_to_base_plus_100() -> None:
    assert cluster_metrics_base_port(7001, 3, None) == 7101


def test_cluster_metrics_ports_may_touch_but_not_overlap_the_nodes_ports() -> None:
    assert cluster_metrics_base_port(7001, 3, 7004) == 7004  # just after 7001..7003
    assert cluster_metrics_base_port(7001, 3, 6998) == 6998  # 6998..7000, just before
    for overlapping in (7003, 6999):
        with pytest.raises(click.BadParameter, match="overlap"):
            cluster_metrics_base_port(7001, 3, overlapping)


def test_cluster_metrics_ports_must_end_by_65535() -> None:
    assert cluster_metrics_base_port(7001, 3, 65533) == 65533
    with pytest.raises(click.BadParameter, match="past 65535"):
        cluster_metrics_base_port(7001, 3, 65534)
