"""One kvraft server process: storage, state machine, Raft node and RPC server, wired up.

``run_server`` is what ``kvraft server`` calls. SIGTERM and SIGINT stop the node
cleanly: a leader first hands its leadership to its most up-to-date follower
(Raft thesis §3.10; at most ``HANDOVER_ELECTION_TIMEOUTS`` election timeouts,
serving all the while so the transfer's messages flow and clients are
redirected), then it stops serving, stops Raft and closes storage; a follower
stops at once. So a rolling restart costs clients a transfer, not an election
timeout of silence per leader. SIGKILL loses nothing
acknowledged because every acknowledgement waits for an fsync. A node that
fails (a storage write failed) stops the same way and the process exits with
the reason (fail-stop: it must not go on answering without its disk).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping

from kvraft.addresses import split_address
from kvraft.errors import StorageError, one_line
from kvraft.raft.config import RaftConfig
from kvraft.raft.membership import Membership as RaftMembership
from kvraft.raft.transfer import TransferRefused
from kvraft.rpc.event_loop import install_event_loop_policy
from kvraft.rpc.peer_auth import Membership, PeerKey
from kvraft.rpc.server import RpcServer
from kvraft.server import state_snapshot
from kvraft.server.driver_io import StallingWorkers, ThreadWorkers
from kvraft.server.forked_encoder import fork_supported
from kvraft.server.gc_pauses import GcPauseWatch
from kvraft.server.kvstore import KVStore
from kvraft.server.metrics import CONTENT_TYPE, NodeMetrics
from kvraft.server.metrics_http import MetricsHttpServer, MetricsListenError
from kvraft.server.node import NodeTiming, RaftNode, TransferFailed
from kvraft.server.options import ServerOptions, raft_message_limits
from kvraft.server.peer_transport import RAFT_METHOD, RpcPeerTransport
from kvraft.server.rsm import RSM
from kvraft.server.service import Service
from kvraft.storage.sqlite import SqliteStorage

log = logging.getLogger("kvraft.server")

# How long a stopping leader waits for its successor, in election timeouts: the
# core abandons a transfer after one (in ticks); the second is slack for ticks
# that run late on a loaded machine. Bounds how long SIGTERM takes on a leader.
HANDOVER_ELECTION_TIMEOUTS = 2


def snapshot_decodes(data: bytes) -> bool:
    """Whether ``data`` restores the RSM (sessions and store): the core's check of a
    received snapshot.

    Decoding it twice (here, then in the driver's restore) costs one more pass
    over a snapshot that is rare and already slow to transfer; in exchange a
    snapshot that would fail at restore is refused before it is persisted.
    """
    try:
        state_snapshot.decode(data)
    except ValueError:  # BadSnapshot
        return False
    return True


def _follow_members(
    options: ServerOptions, transport: RpcPeerTransport, auth: Membership | None
) -> Callable[[Mapping[int, str]], None]:
    """What a node does when the nodes it talks to change: dial them, admit them.

    Those are the members of the latest and the latest committed configuration
    (``RaftNode._check_members``). Peer authentication admits them and every
    ``--peers`` entry: a new member proves the cluster's secret (or its
    certificate) like any peer; a removed one that is still dialed is ignored
    by the core (kvraft.raft.core, ``_from_member``).
    """

    def changed(members: Mapping[int, str]) -> None:
        transport.set_members(members)
        if auth is not None:
            auth.peer_ids = frozenset(members.keys() | options.peers.keys()) - {options.node_id}

    return changed


def _seed(options: ServerOptions) -> RaftMembership:
    """The configuration a data dir created now starts from.

    Bootstrap: the voters ``--peers`` names, at the addresses it gives. A node
    that joins a running cluster (``--join`` / ``--initial-cluster-state
    existing``): nobody, so it never campaigns, and learns the configuration
    from the leader that added it.
    """
    if options.join_existing:
        return RaftMembership(frozenset())
    return RaftMembership.of_voters(sorted(options.peers), options.peers)


class Server:
    """A running node: build with :meth:`open`, then :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        options: ServerOptions,
        node: RaftNode,
        rsm: RSM,
        rpc: RpcServer,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.options = options
        self.node = node
        self.rsm = rsm
        self.rpc = rpc
        self.metrics = metrics  # with --metrics-listen only
        self.metrics_http: MetricsHttpServer | None = None
        self.gc_pauses = GcPauseWatch(
            options.node_id, held=lambda: node.core.log.last_index - node.core.log.snapshot_index
        )
        self._gc_task: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, options: ServerOptions) -> Server:
        """Open the data dir and build the node; StorageError if the dir is not ours."""
        storage = SqliteStorage.open(
            options.data_dir,
            cluster_id=options.cluster_id,
            node_id=options.node_id,
            seed=_seed(options),
        )
        # The seed is the one the data dir was created with, never today's
        # --peers (which only says how to reach members); a configuration in
        # the log or the snapshot overrides it (kvraft.raft.membership).
        seed = storage.seed
        limits = raft_message_limits(options.max_frame_bytes)
        config = RaftConfig(
            node_id=options.node_id,
            peers=tuple(sorted(seed.voters)),
            seed_addresses=tuple(sorted(seed.addresses.items())),
            max_promotion_lag_entries=options.max_promotion_lag_entries,
            election_timeout_ticks=options.election_timeout_ticks,
            heartbeat_interval_ticks=options.heartbeat_interval_ticks,
            max_entries_per_message=limits.max_entries_per_message,
            max_bytes_per_message=limits.max_bytes_per_message,
            snapshot_chunk_bytes=limits.snapshot_chunk_bytes,
            snapshot_validator=snapshot_decodes,
        )
        rsm = RSM(
            options.node_id,
            KVStore(),
            op_timeout_s=options.op_timeout_s,
            max_inflight_proposals=options.max_inflight_proposals,
            max_inflight_bytes=options.max_inflight_bytes,
            max_pending_reads=options.max_pending_reads,
            history_revisions=options.history_revisions,
            history_bytes=options.history_bytes,
            fork_snapshots=options.snapshot_encoder == "fork" and fork_supported(),
        )
        # A secret proves membership; without one, peer TLS vouches (key.secret None).
        key = (
            PeerKey(options.peer_secret, options.cluster_id)
            if options.peer_secret is not None or options.tls.peer_tls
            else None
        )
        transport = RpcPeerTransport(
            options.node_id,
            options.peers,
            key,
            max_frame_bytes=options.max_frame_bytes,
            dial=options.peer_dial(),
        )
        try:
            node = RaftNode(
                config,
                storage,
                transport,
                rsm,
                timing=NodeTiming(tick_interval_s=options.tick_interval_s),
                snapshot_threshold_bytes=options.snapshot_threshold_bytes,
                # Only a test server can be told to stall its disk (raft.stall_disk).
                workers=(
                    StallingWorkers(ThreadWorkers(f"n{options.node_id}"))
                    if options.test_hooks
                    else None
                ),
            )
        except ValueError as exc:
            # The store's rows passed their checks, but what they hold cannot
            # be used: a snapshot the state machine cannot decode (BadSnapshot),
            # a vote for a node that is not a peer. A one-line refusal (exit 1),
            # never a traceback at every restart.
            storage.close()
            transport.close()
            raise StorageError(f"{storage.path}: cannot load: {one_line(exc)}") from None
        rsm.attach(node)
        service = Service(options, node, rsm)
        membership = (
            Membership(key, options.node_id, frozenset(options.peers) - {options.node_id})
            if key is not None
            else None
        )
        node.on_members_changed = _follow_members(options, transport, membership)
        rpc = RpcServer(
            service,
            max_frame_bytes=options.max_frame_bytes,
            name=f"n{options.node_id}",
            peer_auth=membership,
            insecure_peers=options.insecure_peers,
            peer_methods=frozenset({RAFT_METHOD}),
            limits=options.limits,
            tls=options.server_tls(),
            tokens=options.tokens,
        )
        service.open_connections = lambda: len(rpc.connections)
        metrics = None
        if options.metrics_listen is not None:
            metrics = NodeMetrics(
                node=node, rsm=rsm, service=service, rpc=rpc, transport=transport, storage=storage
            )
            metrics.attach()
        return cls(options, node, rsm, rpc, metrics)

    async def start(self) -> None:
        """Listen and start Raft; OSError if the address is taken."""
        if self.options.insecure_peers:
            log.warning(
                "n%d: --insecure-peers: peers are not authenticated; any process that can "
                "connect to %s can forge Raft messages",
                self.options.node_id,
                self.options.listen,
            )
        host, port = split_address(self.options.listen)
        await self.rpc.start(host, port)
        if self.metrics is not None and self.options.metrics_listen is not None:
            metrics = self.metrics
            self.metrics_http = MetricsHttpServer(
                metrics.render,
                metrics.health,
                content_type=CONTENT_TYPE,
                name=f"n{self.options.node_id}",
            )
            try:
                await self.metrics_http.start(*split_address(self.options.metrics_listen))
            except OSError as exc:
                await self.rpc.close()
                raise MetricsListenError(exc.errno, exc.strerror) from exc
            except BaseException:
                await self.rpc.close()
                raise
            log.info(
                "n%d serving metrics on http://%s/metrics",
                self.options.node_id,
                self.metrics_http.address,
            )
        await self.node.start()
        self.gc_pauses.install()
        self._gc_task = asyncio.get_running_loop().create_task(self.gc_pauses.run())
        log.info(
            "n%d [term %d] serving on %s, peers %s",
            self.options.node_id,
            self.node.core.current_term,
            self.rpc.address,
            ",".join(f"{i}={a}" for i, a in sorted(self.options.peers.items())),
        )

    async def hand_over(self) -> None:
        """As leader, hand leadership to the most up-to-date follower before stopping.

        Bounded (HANDOVER_ELECTION_TIMEOUTS); a transfer that fails is logged
        and the node stops anyway, as it did before transfers: the others then
        elect a leader after their election timeout.
        """
        node = self.node
        target = node.transfer_candidate()
        if target is None:
            return
        term = node.core.current_term
        try:
            await node.transfer_leadership(
                target, HANDOVER_ELECTION_TIMEOUTS * node.election_timeout_s
            )
        except (TransferRefused, TransferFailed) as exc:
            log.warning(
                "n%d [term %d] stopping without a successor: %s", self.options.node_id, term, exc
            )

    async def stop(self) -> None:
        """Stop serving and shut Raft and storage down cleanly."""
        if self.metrics_http is not None:
            await self.metrics_http.close()
        await self.rpc.close()
        await self.node.stop()
        if self._gc_task is not None:
            self._gc_task.cancel()
        self.gc_pauses.uninstall()
        log.info("n%d stopped", self.options.node_id)


async def _serve(options: ServerOptions) -> None:
    server = Server.open(options)
    # Handlers before listening: whoever waits for the port to open may send SIGTERM
    # at once, and a signal before the handler would kill the process uncleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        # e.g. the port is taken: release the data dir before the error surfaces
        await server.node.stop()
        raise
    stopped = loop.create_task(stop.wait())
    failed = loop.create_task(server.node.wait_failed())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not failed.done():
        # Asked to stop (not failed): a leader hands over first, still serving.
        await server.hand_over()
    failed.cancel()
    await server.stop()
    if failed.done() and not failed.cancelled():
        raise failed.result()  # e.g. a StorageError: the process exits with its message


def run_server(options: ServerOptions) -> None:
    """Run a node in the foreground until SIGTERM/SIGINT."""
    install_event_loop_policy()
    asyncio.run(_serve(options))
