"""A node's Prometheus metrics: one registry per server, mostly read at scrape time.

Names follow etcd's, so an operator's dashboards and alerts carry over
(``etcd_server_has_leader`` is ``kvraft_server_has_leader`` here, and so on;
docs/metrics.md has the table). Two ways of getting a number, chosen by cost:

- **Read at scrape time** (:class:`_ScrapeCollector`): everything the code
  counts already — the core's term, leader, commit and applied indexes; the
  node's leader changes and messages; the RSM's proposals in flight and Busy
  refusals; the service's requests by method and result (one dict increment
  per request); the RPC layer's connections and bytes (one integer addition
  per read or write). Nothing is observed per request: a scrape turns these
  into metric families, which costs the scraper, not the serving path.
- **Observed** where a duration has no counter to read: the WAL fsync
  (``SqliteStorage.on_commit_s``: one ``perf_counter`` pair and one
  histogram observation per save, that is per Ready, on the storage thread),
  a snapshot's phases (once per snapshot), and a leader's AppendEntries round
  trip to each follower (:mod:`kvraft.server.peer_rtt`: one probe at a
  time per peer, fed by the node's ``on_append_sent``/``on_append_reply``).

The registry is this object's own ``CollectorRegistry``, never the global
default, so several nodes in one process (tests) keep apart. prometheus_client
histograms are thread-safe, which the storage thread's observations need.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvraft.raft.core import Role
from kvraft.rpc.server import RpcServer
from kvraft.server.health import Health, judge, stall_bound_s
from kvraft.server.node import RaftNode
from kvraft.server.peer_rtt import PeerRoundTrips
from kvraft.server.peer_transport import RpcPeerTransport
from kvraft.server.rsm import RSM
from kvraft.server.service import Service
from kvraft.storage.sqlite import SqliteStorage

# The text format generate_latest writes (0.0.4), which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` upper bounds from ``start``, each ``factor`` times the last (as etcd's)."""
    return tuple(start * factor**i for i in range(count))


# fsync takes ~0.3 ms on this project's machines (etcd's 1 ms first bucket would
# hold nearly every save): 50 us to ~3.3 s.
FSYNC_BUCKETS_S = exponential_buckets(50e-6, 2, 17)
# A leader's round trip to a follower, its fsync included when entries went: 100 us to ~0.8 s.
PEER_RTT_BUCKETS_S = exponential_buckets(100e-6, 2, 14)
# A snapshot's phases: 1 ms (a small copy) to ~33 s (a large encode or write).
SNAPSHOT_BUCKETS_S = exponential_buckets(1e-3, 2, 16)
SNAPSHOT_PHASES = ("copy", "encode", "write", "record", "total")

# The service's result and error classes -> the ``result`` label of client requests.
RESULT_LABELS = {
    "GetOk": "ok",
    "PutOk": "ok",
    "NoKeyResult": "no_key",
    "VersionMismatchResult": "version_mismatch",
    "StaleRequestResult": "stale_request",
    "SessionExpiredResult": "session_expired",
    "NotLeader": "not_leader",
    "WrongLeader": "wrong_leader",
    "Busy": "busy",
}
# Results that mean a proposal this leader submitted did not commit in time or was
# lost with its leadership: etcd's proposals_failed_total.
FAILED_PROPOSAL_RESULTS = frozenset({"WrongLeader"})


class NodeMetrics:
    """The metrics of one server process and its ``/health`` verdict.

    Build it with the server's parts, then :meth:`attach` it (sets the
    observation hooks); :meth:`render` is the ``/metrics`` body.
    """

    def __init__(
        self,
        *,
        node: RaftNode,
        rsm: RSM,
        service: Service,
        rpc: RpcServer,
        transport: RpcPeerTransport | None,
        storage: SqliteStorage | None,
        process_metrics: bool = True,
    ) -> None:
        self.node = node
        self.storage = storage
        self.registry = CollectorRegistry(auto_describe=False)
        self.fsync = Histogram(
            "kvraft_disk_wal_fsync_duration_seconds",
            "Seconds one save (one Ready) took in its SQLite transaction, through the"
            " commit and its fsync.",
            buckets=FSYNC_BUCKETS_S,
            registry=self.registry,
        )
        self.snapshot = Histogram(
            "kvraft_snapshot_save_duration_seconds",
            "Seconds each phase of a snapshot this node took lasted (copy on the loop,"
            " encode, write its file, record it; total).",
            ["phase"],
            buckets=SNAPSHOT_BUCKETS_S,
            registry=self.registry,
        )
        self.peer_rtt = Histogram(
            "kvraft_network_peer_round_trip_time_seconds",
            "As leader: seconds from an AppendEntries to a follower to its reply"
            " (its fsync included when entries went).",
            ["to"],
            buckets=PEER_RTT_BUCKETS_S,
            registry=self.registry,
        )
        # The labelled children, looked up once, not per observation.
        self._rtt = {peer: self.peer_rtt.labels(to=str(peer)) for peer in node.peers}
        self._snapshot = {phase: self.snapshot.labels(phase=phase) for phase in SNAPSHOT_PHASES}
        self.registry.register(_ScrapeCollector(node, rsm, service, rpc, transport, storage))
        if process_metrics:  # CPU, memory, open files: read from /proc at scrape time
            ProcessCollector(registry=self.registry)
        election_s = node.config.election_timeout_ticks * node.timing.tick_interval_s
        self.stall_s = stall_bound_s(
            node.config.election_timeout_ticks, node.timing.tick_interval_s
        )
        self.round_trips = PeerRoundTrips(self._observe_rtt, lost_s=2 * election_s)

    def attach(self) -> None:
        """Turn on the observations: the storage's fsync, the node's snapshots and round trips."""
        if self.storage is not None:
            self.storage.on_commit_s = self.fsync.observe
        self.node.on_append_sent = self.round_trips.sent
        self.node.on_append_reply = self.round_trips.replied
        self.node.on_snapshot_s = self._observe_snapshot

    def detach(self) -> None:
        if self.storage is not None:
            self.storage.on_commit_s = None
        self.node.on_append_sent = None
        self.node.on_append_reply = None
        self.node.on_snapshot_s = None

    def _observe_rtt(self, peer: int, seconds: float) -> None:
        child = self._rtt.get(peer)
        if child is not None:
            child.observe(seconds)

    def _observe_snapshot(
        self, copy_s: float, encode_s: float, write_s: float, record_s: float
    ) -> None:
        phases = self._snapshot
        phases["copy"].observe(copy_s)
        phases["encode"].observe(encode_s)
        phases["write"].observe(write_s)
        phases["record"].observe(record_s)
        phases["total"].observe(copy_s + encode_s + write_s + record_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (the ``/metrics`` body)."""
        return generate_latest(self.registry)

    def health(self) -> Health:
        """``/health``'s verdict now (see :mod:`kvraft.server.health`)."""
        node = self.node
        core = node.core
        return judge(
            leader_id=core.leader_id,
            applied_index=core.applying_index,
            commit_index=core.commit_index,
            applied_at_s=node.applied_at_s,
            now_s=node.clock.now_s(),
            stall_s=self.stall_s,
        )


class _ScrapeCollector:
    """The counters the server keeps anyway, turned into metric families at each scrape."""

    def __init__(
        self,
        node: RaftNode,
        rsm: RSM,
        service: Service,
        rpc: RpcServer,
        transport: RpcPeerTransport | None,
        storage: SqliteStorage | None,
    ) -> None:
        self.node = node
        self.rsm = rsm
        self.service = service
        self.rpc = rpc
        self.transport = transport
        self.storage = storage

    def collect(self) -> Iterable[Metric]:
        yield from self._server()
        yield from self._proposals()
        yield from self._network()

    def _server(self) -> Iterator[Metric]:
        node, core = self.node, self.node.core
        info = GaugeMetricFamily(
            "kvraft_server_info", "This node's Raft id as a label (always 1).", labels=["node_id"]
        )
        info.add_metric([str(node.id)], 1)
        yield info
        yield _gauge(
            "kvraft_server_has_leader",
            "1 if this node knows a leader of its term, else 0.",
            int(core.leader_id is not None),
        )
        yield _gauge(
            "kvraft_server_is_leader",
            "1 if this node is the leader, else 0.",
            int(core.role is Role.LEADER),
        )
        yield _counter(
            "kvraft_server_leader_changes_seen_total",
            "Times this node saw a leader other than the last it knew (the first included).",
            node.leader_changes,
        )
        yield _gauge("kvraft_server_term", "This node's current Raft term.", core.current_term)
        if self.storage is not None:
            yield _gauge(
                "kvraft_disk_storage_size_bytes",
                "Bytes of snapshot and log held by this node's storage.",
                self.storage.size_bytes(),
            )

    def _proposals(self) -> Iterator[Metric]:
        core, rsm = self.node.core, self.rsm
        yield _counter(
            "kvraft_server_proposals_committed_total",
            "The commit index: entries known committed (as etcd, an index).",
            core.commit_index,
        )
        yield _counter(
            "kvraft_server_proposals_applied_total",
            "The applied index: entries applied to the state machine.",
            core.applying_index,
        )
        yield _gauge(
            "kvraft_server_proposals_pending",
            "Entries this leader submitted and has not applied yet (the admission budget).",
            rsm.inflight_proposals,
        )
        requests = dict(self.service.requests)
        yield _counter(
            "kvraft_server_proposals_failed_total",
            "Client operations submitted that did not apply in time or lost their"
            " leader (answered WrongLeader).",
            sum(n for (_, name), n in requests.items() if name in FAILED_PROPOSAL_RESULTS),
        )
        yield _counter(
            "kvraft_server_proposals_refused_total",
            "Client operations refused with Busy: the admission budget was full.",
            rsm.busy_refusals,
        )
        by_label: dict[tuple[str, str], int] = {}
        for (method, name), n in requests.items():
            key = (method, RESULT_LABELS.get(name, "error"))
            by_label[key] = by_label.get(key, 0) + n
        family = CounterMetricFamily(
            "kvraft_server_client_requests_total",
            "get and put requests answered, by method and result.",
            labels=["method", "result"],
        )
        for (method, result), n in sorted(by_label.items()):
            family.add_metric([method, result], n)
        yield family

    def _network(self) -> Iterator[Metric]:
        node, rpc = self.node, self.rpc
        yield _gauge(
            "kvraft_network_connections",
            "Connections open to this node's port.",
            len(rpc.connections),
        )
        yield _counter(
            "kvraft_network_refused_connections_total",
            "Connections closed at once because --max-connections were open.",
            rpc.refused_connections,
        )
        yield _counter(
            "kvraft_network_raft_messages_sent_total",
            "Raft messages handed to the network.",
            node.messages_sent,
        )
        yield _counter(
            "kvraft_network_raft_messages_received_total",
            "Raft messages taken from peers.",
            node.messages_received,
        )
        sent = CounterMetricFamily(
            "kvraft_network_peer_sent_bytes_total",
            "Bytes this node wrote to each peer (Raft messages and handshakes).",
            labels=["to"],
        )
        if self.transport is not None:
            for peer, client in sorted(self.transport.clients.items()):
                sent.add_metric([str(peer)], client.bytes_sent)
        yield sent
        received = CounterMetricFamily(
            "kvraft_network_peer_received_bytes_total",
            "Bytes read from each peer on the connections it authenticated.",
            labels=["from"],
        )
        for peer in node.peers:
            received.add_metric([str(peer)], rpc.peer_bytes_received.get(peer, 0))
        yield received
        yield _counter(
            "kvraft_network_client_received_bytes_total",
            "Bytes read from connections that are not an authenticated peer's (clients,"
            " handshakes).",
            rpc.client_bytes_received,
        )
        yield _counter(
            "kvraft_network_client_sent_bytes_total",
            "Bytes this node's port wrote: replies to clients and handshake answers.",
            rpc.bytes_sent,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
