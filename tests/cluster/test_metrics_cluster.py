"""``--metrics-listen`` on a live 3-node cluster of real processes, scraped over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvraft.client.client import Client
from kvraft.testing import processes
from kvraft.testing.history import History
from kvraft.testing.waiting import wait_until
from tests.adversary.test_slow_disk import hook
from tests.support.metrics_docs import documented_metrics

from .kv_support import BackgroundPutters, find_leader

pytestmark = pytest.mark.slow

# Generous: other suites may share the two cores (elections and restarts slow down).
DEADLINE_S = 60.0
# How long the stalled leader's save waits: past the 0.9 s bound with room to see it.
STALL_S = 5.0


def fetch(address: str, path: str) -> tuple[int, str]:
    """(status, body) of GET http://ADDRESS/PATH; 5xx answers are answers too."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(address: str) -> dict[str, float]:
    """The unlabelled samples of a node's /metrics, plus labelled ones as NAME{k=v,...}."""
    status, text = fetch(address, "/metrics")
    assert status == 200, text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
def metrics_ports() -> Iterator[list[int]]:
    ports = [processes.reserve_port() for _ in range(3)]
    try:
        yield ports
    finally:
        processes.release_ports(ports)


def test_a_live_cluster_reports_its_leader_commits_fsyncs_and_health(
    make_cluster, metrics_ports: list[int]
) -> None:
    """Every node has a leader and exactly one is it; puts make the committed count
    grow on all; the fsync histogram has counts; /health is 200 on all. With
    the two followers killed, the leader loses its quorum and steps down, and
    its /health turns 503 naming the reason."""
    addresses = [f"127.0.0.1:{p}" for p in metrics_ports]
    cluster = make_cluster(3, server_args=lambda i: ["--metrics-listen", addresses[i]])

    def settled() -> bool:
        pages = [scrape(a) for a in addresses]
        return all(p["kvraft_server_has_leader"] == 1 for p in pages) and (
            sum(p["kvraft_server_is_leader"] for p in pages) == 1
        )

    wait_until(settled, DEADLINE_S, interval_s=0.1, message="one leader known to all")
    before = [scrape(a)["kvraft_server_proposals_committed_total"] for a in addresses]
    with Client(cluster.addresses, deadline=DEADLINE_S) as client:
        for i in range(10):
            client.put(f"m{i}", "v", 0)

    def committed_on_all() -> bool:
        now = [scrape(a)["kvraft_server_proposals_committed_total"] for a in addresses]
        return all(n >= b + 10 for n, b in zip(now, before, strict=True))

    wait_until(committed_on_all, DEADLINE_S, interval_s=0.1, message="10 more commits on all")
    for address in addresses:
        page = scrape(address)
        assert page["kvraft_disk_wal_fsync_duration_seconds_count"] > 0
        assert page["kvraft_server_leader_changes_seen_total"] >= 1
    leader = find_leader(cluster)
    page = scrape(addresses[leader])
    assert page["kvraft_server_client_requests_total{method=put,result=ok}"] >= 1
    # A leader's page has every documented metric (its followers make the per-peer ones).
    names = {key.split("{", 1)[0] for key in page}
    missing = {d for d in documented_metrics() if d not in names and f"{d}_count" not in names}
    assert missing == set()
    followers = [i for i in range(3) if i != leader]
    for i in followers:
        assert page[f"kvraft_network_peer_round_trip_time_seconds_count{{to={i}}}"] > 0
        assert page[f"kvraft_network_peer_sent_bytes_total{{to={i}}}"] > 0
        assert page[f"kvraft_network_peer_received_bytes_total{{from={i}}}"] > 0
    wait_until(
        lambda: all(fetch(a, "/health")[0] == 200 for a in addresses),
        DEADLINE_S,
        interval_s=0.1,
        message="/health 200 on every node",
    )
    assert json.loads(fetch(addresses[leader], "/health")[1]) == {"health": "true"}

    for i in followers:
        cluster.kill(i)
    _, body = wait_until(
        lambda: (answer := fetch(addresses[leader], "/health"))[0] == 503 and answer,
        DEADLINE_S,
        interval_s=0.1,
        message="the survivor's /health 503",
    )
    assert json.loads(body) == {"health": "false", "reason": "no leader"}
    survivor = scrape(addresses[leader])
    assert survivor["kvraft_server_has_leader"] == 0
    assert survivor["kvraft_server_is_leader"] == 0


def test_a_leader_whose_disk_stalls_reports_its_applied_index_stalled(
    make_cluster, metrics_ports: list[int]
) -> None:
    """The leader's disk stalls 5 s under puts: its followers' acknowledgements keep
    committing (their majority needs no leader's fsync) while its own Ready
    loop waits on the save, so its applied index stays behind its commit index
    for longer than the bound (0.9 s) and /health answers 503 with that
    reason; once the save ends it applies again and /health is 200."""
    addresses = [f"127.0.0.1:{p}" for p in metrics_ports]
    cluster = make_cluster(3, server_args=lambda i: ["--metrics-listen", addresses[i]])
    leader = find_leader(cluster, timeout_s=DEADLINE_S)
    history = History()
    work = BackgroundPutters(cluster, history)
    try:
        wait_until(lambda: work.total() >= 5, DEADLINE_S, message="puts flowing")
        wait_until(
            lambda: fetch(addresses[leader], "/health")[0] == 200,
            DEADLINE_S,
            interval_s=0.1,
            message="the leader healthy",
        )
        hook(cluster, leader, "raft.stall_disk", STALL_S)
        _, body = wait_until(
            lambda: (answer := fetch(addresses[leader], "/health"))[0] == 503 and answer,
            STALL_S,
            interval_s=0.05,
            message="the stalled leader's /health 503",
        )
        reason = json.loads(body)["reason"]
        assert reason.startswith("applied index stalled at "), reason
        assert "(commit index " in reason
        wait_until(
            lambda: fetch(addresses[leader], "/health")[0] == 200,
            DEADLINE_S,
            interval_s=0.1,
            message="the leader healthy again after the stall",
        )
    finally:
        work.finish()
