"""Dispatch of incoming RPCs: KV commands to the RSM, Raft messages to the node, the rest refused.

``get.index`` and ``range.index`` take the same arguments as ``get`` and
``range`` and answer alike, without a log entry: read-index reads
(:meth:`~kvraft.server.rsm.RSM.read`).

``leader.transfer`` (an admin's: ``kvraft leader transfer --to ID``) hands this
leader's leadership to a peer and answers once the peer leads.

The test hooks (``raft.*``) let the Raft test suite read state, submit raw
commands and read committed entries on real processes; they are refused unless
the server was started with ``--test-hooks``, because a raw submit can put an
undecodable command in the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from kvraft.errors import InvalidArgument, KVError, NotLeader, ProtocolError, RemoteError
from kvraft.kv_protocol import (
    CompactOp,
    DeleteOp,
    DeleteRangeOp,
    GetOp,
    NotLeaderResult,
    PutOp,
    RangeOp,
    SetOp,
    TxnOp,
    WatchPoll,
    check_op,
    check_watch_poll,
)
from kvraft.lease_protocol import LeaseGrantOp, LeaseKeepaliveOp, LeaseRevokeOp, LeaseTtlOp
from kvraft.raft.transfer import TransferRefused
from kvraft.rpc.codec import check
from kvraft.rpc.tokens import Role
from kvraft.rpc.wire_errors import UnknownMethod
from kvraft.server import backup, members_rpc
from kvraft.server.driver_io import StallingWorkers
from kvraft.server.node import RaftNode, TransferFailed
from kvraft.server.options import ServerOptions
from kvraft.server.peer_transport import RAFT_METHOD
from kvraft.server.rsm import RSM
from kvraft.server.watch import WatchPolls

TEST_HOOKS = ("raft.state", "raft.submit", "raft.committed", "raft.campaign", "raft.stall_disk")

# The role a client token needs for each method (--auth-token-file); every
# method not named here, the test hooks included, needs admin.
METHOD_ROLES = {
    "get": Role.READ,
    "put": Role.READWRITE,
    "status": Role.ADMIN,
    "leader.transfer": Role.ADMIN,
    "range": Role.READ,
    "get.index": Role.READ,
    "range.index": Role.READ,
    "set": Role.READWRITE,
    "delete": Role.READWRITE,
    "delete_range": Role.READWRITE,
    # A txn may write; one with reads only still needs readwrite (etcd does the same).
    "txn": Role.READWRITE,
    # A backup reads every key and session: admin (kvraft snapshot save).
    **{method: Role.ADMIN for method in backup.METHODS},
    # A watch poll reads this replica's history; compact drops history for everyone.
    "watch.poll": Role.READ,
    "compact": Role.READWRITE,
    # Leases: granting, renewing and revoking write (a revoke deletes keys).
    "lease_grant": Role.READWRITE,
    "lease_keepalive": Role.READWRITE,
    "lease_revoke": Role.READWRITE,
    "lease_ttl": Role.READ,
    # The configuration and its changes (kvraft member ...): admin.
    **{method: Role.ADMIN for method in members_rpc.METHODS},
}

# Each key-value method and the command class its argument must be.
KV_METHODS: dict[str, type[Any]] = {
    "get": GetOp,
    "put": PutOp,
    "range": RangeOp,
    "set": SetOp,
    "delete": DeleteOp,
    "delete_range": DeleteRangeOp,
    "txn": TxnOp,
    "compact": CompactOp,
    # The leader's own LeaseExpireOp has no method: no client can propose an expiry.
    "lease_grant": LeaseGrantOp,
    "lease_keepalive": LeaseKeepaliveOp,
    "lease_revoke": LeaseRevokeOp,
    "lease_ttl": LeaseTtlOp,
}

# The read-index twins of the read methods (same argument class): no log entry.
INDEX_READ_METHODS: dict[str, type[Any]] = {"get.index": GetOp, "range.index": RangeOp}

# How long leader.transfer waits for the target to lead, in election timeouts: the
# core abandons the transfer after one; the second is slack for a loaded machine.
TRANSFER_WAIT_ELECTION_TIMEOUTS = 2

# The longest storage stall raft.stall_disk accepts: long enough for any test
# of a slow disk, short enough that a mistaken call cannot wedge a node for long.
MAX_DISK_STALL_S = 30.0


class Service:
    """The :class:`~kvraft.rpc.server.Handler` of a kvraft server."""

    def __init__(self, options: ServerOptions, node: RaftNode, rsm: RSM) -> None:
        self.options = options
        self.node = node
        self.rsm = rsm
        self.watch = WatchPolls(rsm)
        # The RPC server's open connections, for status (set once it exists).
        self.open_connections: Callable[[], int] = lambda: 0
        # (method, the result's or error's class name) -> key-value requests answered
        # so: one dict increment per request, turned into metrics at scrape time.
        self.requests: Counter[tuple[str, str]] = Counter()
        self.members = members_rpc.MemberService(node)
        self.snapshots = backup.SnapshotServer(
            node, rsm, cluster_id=options.cluster_id, max_frame_bytes=options.max_frame_bytes
        )

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        op_type = KV_METHODS.get(method) or INDEX_READ_METHODS.get(method)
        if op_type is not None:
            # Validate before anything else, so a bad operation changes nothing anywhere.
            check(args, op_type, method)
            check_op(args, self.options.max_value_bytes)
            try:
                run = self.rsm.read if method in INDEX_READ_METHODS else self.rsm.execute
                result = await run(args)
            except NotLeader:
                self.requests[method, "NotLeader"] += 1
                # During a transfer, point the client at the leader-to-be.
                transfer = self.node.core.transfer_target
                leader = transfer if transfer is not None else self.node.core.leader_id
                return NotLeaderResult(
                    self.options.peers.get(leader) if leader is not None else None
                )
            except KVError as exc:  # WrongLeader (a failed proposal), Busy
                self.requests[method, type(exc).__name__] += 1
                raise
            self.requests[method, type(result).__name__] += 1
            return result
        if method == "watch.poll":
            check(args, WatchPoll, method)
            check_watch_poll(args)
            return await self.watch.poll(args)
        if method == "status":
            status = self.node.status()
            status["address"] = self.options.listen
            status["skipped_commands"] = self.rsm.skipped_commands
            status["keys"] = len(self.rsm.store)
            status["sessions"] = len(self.rsm.sessions)
            status["inflight_proposals"] = self.rsm.inflight_proposals
            status["busy_refusals"] = self.rsm.busy_refusals
            status["connections"] = self.open_connections()
            status["watch_polls_waiting"] = self.watch.waiting
            status["history_first_revision"] = self.rsm.history.first_revision
            status["leases"] = len(self.rsm.store.leases)
            return status
        if method == "leader.transfer":
            check(args, int, method)
            return await self._transfer_leadership(args)
        if method in backup.METHODS:
            return await self.snapshots.handle(method, args)
        if method in members_rpc.METHODS:
            return await self.members.handle(method, args)
        if method in TEST_HOOKS:
            if not self.options.test_hooks:
                raise UnknownMethod(f"{method} needs a server started with --test-hooks")
            return self._test_hook(method, args)
        raise UnknownMethod(f"no method {method!r}")

    async def _transfer_leadership(self, target: int) -> dict[str, Any]:
        """Hand leadership to ``target``; errors travel as ``transfer_refused``/``_failed``."""
        wait_s = TRANSFER_WAIT_ELECTION_TIMEOUTS * self.node.election_timeout_s
        try:
            elapsed_s = await self.node.transfer_leadership(target, wait_s)
        except TransferRefused as exc:
            raise RemoteError("transfer_refused", str(exc)) from None
        except TransferFailed as exc:
            raise RemoteError("transfer_failed", str(exc)) from None
        return {"from": self.options.node_id, "to": target, "elapsed_s": elapsed_s}

    def _test_hook(self, method: str, args: Any) -> Any:
        if method == "raft.state":
            return self.node.get_state()
        if method == "raft.submit":
            check(args, bytes, "raft.submit")
            return self.node.submit(args)
        if method == "raft.committed":
            check(args, int, "raft.committed")
            return self.node.get_committed(args)
        if method == "raft.campaign":
            self.node.campaign()
            return None
        if method == "raft.stall_disk":
            # bool is an int, and NaN fails both comparisons: refuse them all.
            if (
                not isinstance(args, (int, float))
                or isinstance(args, bool)
                or not 0 < args <= MAX_DISK_STALL_S
            ):
                raise InvalidArgument(
                    f"raft.stall_disk takes seconds in (0, {MAX_DISK_STALL_S:g}], not {args!r}"
                )
            workers = self.node.workers
            assert isinstance(workers, StallingWorkers), "a --test-hooks server stalls its disk"
            workers.stall(float(args))
            return None
        raise AssertionError(method)

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        """A Raft message, taken as from ``peer_id`` only: the RPC server's proven identity.

        The sender field is a claim; the RPC server refuses a Raft frame on a
        connection that did not authenticate, so ``peer_id`` None is a bug.
        """
        if method != RAFT_METHOD:
            raise ProtocolError(f"unknown one-way method {method!r}")
        if peer_id is None:
            raise ProtocolError(f"a Raft message from {sender!r}, not an authenticated peer")
        self.node.receive(peer_id, args)
