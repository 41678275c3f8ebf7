"""The replicated state machine: KV operations in, through the Raft log, results out.

A get or put received by this server is encoded as a command and submitted
to Raft; the RPC then waits until the entry at the returned index is applied.
Every server applies every committed entry, in log order, to its own
:class:`KVStore`, whoever submitted it; only the RPC waiting for an index gets
that entry's result. Gets go through the log too, so a deposed leader or a
minority partition can never answer with stale data.

Waiting uses one future per submitted index, resolved by the apply loop,
rather than by polling ``get_committed`` every 10-50 ms, as the classic RSM API does:
the behaviour is the same (a different command at the index, a change of
term or leadership, or a timeout answers WrongLeader), but a commit answers
at once instead of up to one polling period later, and idle waiters cost
nothing.

Every command is applied through the client sessions (:mod:`kvraft.server.sessions`):
a copy of a request already applied gets the first application's result, so a
client's resend after a lost reply answers as the first attempt did.

Admission (a budget on the leader): entries this server submitted and has not
yet applied are counted, in number and in command bytes. Over
``max_inflight_proposals`` or ``max_inflight_bytes`` it answers Busy without
submitting: the log and the memory of every replica stay bounded under
overload, and the client backs off instead of piling on copies.

Read-index reads (``read="index"``, :meth:`RSM.read`): a get or range that
skips the log. The node confirms with one heartbeat round that it still
leads (:mod:`kvraft.raft.read_index`) and names a read index; once the store
has applied it (:mod:`kvraft.server.applied`) the read is answered from the
store, with the result a logged read would have had. Bounded by
``max_pending_reads``: over it the leader answers Busy.

Watch: the apply loop journals what each command changed in the store and
records the events of each new revision in :attr:`RSM.history`
(:mod:`kvraft.server.watch_history`); a ``compact`` command drops history
below its revision; a snapshot restore resets it to start after the
snapshot's revision. :meth:`RSM.wait_for_change` is how a waiting watch
poll learns of a new revision without polling.

Leases: the RSM owns the node's :class:`~kvraft.server.lease_keeper.LeaseKeeper`,
tells it of every applied command, of restores and of role changes, and fills
the leader's remaining TTL into a ``lease_ttl`` result (not replicated state).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvraft.errors import Busy, NotLeader, WrongLeader
from kvraft.kv_protocol import CompactOk, CompactOp, GetOp, Op, RangeOp
from kvraft.lease_protocol import LeaseTtlResult
from kvraft.raft.membership import is_config_command
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.server import state_snapshot
from kvraft.server.applied import AppliedIndex
from kvraft.server.commands import BadCommand, apply_command, decode_command, encode_command
from kvraft.server.forked_encoder import fork_encoder
from kvraft.server.kvstore import KVStore
from kvraft.server.lease_keeper import LeaseKeeper
from kvraft.server.node import RaftNode, ReadFailed, StateMachine
from kvraft.server.options import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_REVISIONS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_INFLIGHT_PROPOSALS,
    DEFAULT_MAX_PENDING_READS,
)
from kvraft.server.sessions import SessionLimits, Sessions
from kvraft.server.watch_history import WatchHistory

log = logging.getLogger("kvraft.rsm")


@dataclass(slots=True)
class _Waiter:
    client_id: str
    request_id: int
    term: int
    future: asyncio.Future[Any]


class RSM(StateMachine):
    """Owns the KV state of one server and the RPCs waiting on the log."""

    def __init__(
        self,
        node_id: int,
        store: KVStore,
        *,
        op_timeout_s: float,
        session_limits: SessionLimits | None = None,
        max_inflight_proposals: int = DEFAULT_MAX_INFLIGHT_PROPOSALS,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        max_pending_reads: int = DEFAULT_MAX_PENDING_READS,
        history_revisions: int = DEFAULT_HISTORY_REVISIONS,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        fork_snapshots: bool = False,
    ) -> None:
        self.node_id = node_id
        # Encode snapshots in a forked child (kvraft.server.forked_encoder), not a
        # thread: what servers do; tests and the simulators keep the thread.
        self.fork_snapshots = fork_snapshots
        self.store = store
        self.sessions = Sessions(session_limits)
        self.op_timeout_s = op_timeout_s
        self.max_inflight_proposals = max_inflight_proposals
        self.max_inflight_bytes = max_inflight_bytes
        self.max_pending_reads = max_pending_reads
        self.applied = AppliedIndex()
        self.index_reads = 0  # read-index reads answered
        self._node: RaftNode | None = None
        # index -> the RPC waiting for the entry it submitted at that index
        self._waiters: dict[int, _Waiter] = {}
        # index -> command bytes, for entries this server submitted as leader and
        # has not applied yet (the admission budget).
        # Invariant: inflight_bytes == sum(self._inflight.values()).
        self._inflight: dict[int, int] = {}
        self.inflight_bytes = 0
        self.skipped_commands = 0
        self.busy_refusals = 0
        self.history = WatchHistory(history_revisions, history_bytes, store.revision + 1)
        # Resolved (and replaced) whenever the history changes: waiting watch polls.
        self._changed: asyncio.Future[None] | None = None
        self.leases = LeaseKeeper(
            node_id,
            lambda: self.store.leases,
            lambda op: self.execute(op, until_applied=True),
        )

    @property
    def inflight_proposals(self) -> int:
        """Entries submitted here as leader and not applied yet."""
        return len(self._inflight)

    def attach(self, node: RaftNode) -> None:
        self._node = node
        self.leases.attach(node.clock.now_s, lambda: node.running)

    async def execute(self, op: Op, *, until_applied: bool = False) -> Any:
        """Run ``op`` through the log; its result, or WrongLeader.

        NotLeader and Busy mean nothing was submitted: the op surely did not apply.
        WrongLeader after the op timeout means the entry may still apply; with
        ``until_applied`` there is no timeout: the wait ends when the entry
        applies, leadership is lost (:meth:`on_role_change` fails the waiter) or
        the node stops, for a proposer that must not propose its command twice
        (the lease keeper).
        """
        node = self._node
        assert node is not None, "RSM not attached to a node"
        command = encode_command(op)
        if (
            len(self._inflight) >= self.max_inflight_proposals
            or self.inflight_bytes + len(command) > self.max_inflight_bytes
        ):
            self.busy_refusals += 1
            raise Busy(
                f"n{self.node_id}: {len(self._inflight)} proposals, {self.inflight_bytes} bytes "
                f"in flight (limits {self.max_inflight_proposals}, {self.max_inflight_bytes})"
            )
        submitted = node.submit(command)
        if submitted is None:
            raise NotLeader(f"n{self.node_id} is not the leader")
        index, term = submitted
        self._inflight[index] = len(command)
        self.inflight_bytes += len(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        displaced = self._waiters.get(index)
        if displaced is not None:
            _fail(displaced, f"index {index} reused in term {term}")
        waiter = _Waiter(op.client_id, op.request_id, term, future)
        self._waiters[index] = waiter
        try:
            if until_applied:
                return await self._until_applied(future, node, index)
            return await asyncio.wait_for(future, self.op_timeout_s)
        except TimeoutError:
            raise WrongLeader(
                f"n{self.node_id}: index {index} not applied within {self.op_timeout_s}s"
            ) from None
        finally:
            if self._waiters.get(index) is waiter:
                del self._waiters[index]

    async def _until_applied(self, future: asyncio.Future[Any], node: RaftNode, index: int) -> Any:
        """``future``'s result, however long it takes, unless the node stops: a halted
        node tells its state machine nothing (a killed process's waiters just go)."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.op_timeout_s)
            except TimeoutError:
                if not node.running:
                    raise WrongLeader(
                        f"n{self.node_id}: stopped before index {index} applied"
                    ) from None

    async def read(self, op: GetOp | RangeOp) -> Any:
        """Answer a get or range without a log entry (read-index, Raft thesis §6.4).

        Same results as :meth:`execute` would give the op, minus the session
        bookkeeping a read does not need. NotLeader (not leader) and Busy
        (``max_pending_reads`` held) mean nothing is held; WrongLeader means
        leadership was lost, or the read was not confirmed and applied within
        the op timeout: the client asks again, elsewhere if need be.
        """
        node = self._node
        assert node is not None, "RSM not attached to a node"
        if node.pending_reads >= self.max_pending_reads:
            self.busy_refusals += 1
            raise Busy(
                f"n{self.node_id}: {node.pending_reads} reads pending "
                f"(limit {self.max_pending_reads})"
            )
        confirmed = node.read_index()
        if confirmed is None:
            raise NotLeader(f"n{self.node_id} is not the leader")
        try:
            async with asyncio.timeout(self.op_timeout_s):
                index = await confirmed
                await self.applied.wait(index)
        except ReadFailed as exc:
            raise WrongLeader(str(exc)) from None
        except TimeoutError:
            raise WrongLeader(
                f"n{self.node_id}: read not confirmed and applied within {self.op_timeout_s}s"
            ) from None
        self.index_reads += 1
        return apply_command(self.store, op)

    # ---------------------------------------------------- StateMachine (apply loop)

    def apply(self, entry: Entry) -> None:
        op: Op | None = None
        result: Any = None
        self._settle(entry.index)
        self.sessions.advance(entry.index)
        if entry.command is not None and not is_config_command(entry.command):
            # (A configuration entry is the core's; to the state machine a no-op.)
            try:
                op = decode_command(entry.command)
            except BadCommand as exc:
                # Only a bug or a raw test-hook submit puts such a command in the log;
                # every replica skips it alike, so they stay identical.
                self.skipped_commands += 1
                log.warning(
                    "n%d skipped undecodable command at index %d: %s",
                    self.node_id,
                    entry.index,
                    exc,
                )
            else:
                before = self.store.revision
                self.store.record_changes()
                result = self.sessions.apply(self.store, op, entry.index)
                changes = self.store.take_changes()
                self.leases.applied(op, result)
                if isinstance(result, LeaseTtlResult):
                    result = dataclasses.replace(
                        result, remaining_s=self.leases.remaining_s(result.lease_id)
                    )
                if self.store.revision != before:
                    self.history.record(self.store.revision, changes)
                    self._wake_watchers()
                elif isinstance(op, CompactOp) and isinstance(result, CompactOk):
                    self.history.compact(result.first_revision)
                    self._wake_watchers()
        self.applied.reached(entry.index)
        waiter = self._waiters.pop(entry.index, None)
        if waiter is None or waiter.future.done():
            return
        if (
            op is not None
            and entry.term == waiter.term
            and op.client_id == waiter.client_id
            and op.request_id == waiter.request_id
        ):
            waiter.future.set_result(result)
        else:
            _fail(waiter, f"another command was committed at index {entry.index}")

    def _settle(self, index: int) -> None:
        """The entry at ``index`` is applied: it leaves the admission budget."""
        size = self._inflight.pop(index, None)
        if size is not None:
            self.inflight_bytes -= size

    def _wake_watchers(self) -> None:
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return once the history changes (a new revision, a compaction, a reset) or after
        ``timeout_s``; one shared future, so any number of waiters cost one wake-up."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout_s)

    def restore(self, snapshot: Snapshot) -> None:
        self.sessions, self.store = state_snapshot.decode(snapshot.data, self.sessions.limits)
        # The events between the old store and the snapshot are unknown here.
        self.history.reset(self.store.revision + 1)
        self._wake_watchers()
        self.leases.reset()
        self.applied.reached(snapshot.index)
        for index in [i for i in self._inflight if i <= snapshot.index]:
            self._settle(index)
        for index in [i for i in self._waiters if i <= snapshot.index]:
            _fail(self._waiters.pop(index), f"index {index} replaced by a snapshot")

    def capture_snapshot(self) -> Callable[[], bytes]:
        if self.fork_snapshots:
            # The child sees the live state as of now, between two applies: no copy.
            sessions, store = self.sessions, self.store
            forked = fork_encoder(lambda: state_snapshot.encode_chunks(sessions, store))
            if forked is not None:
                return forked
        # A shallow copy of the store is consistent (its records are immutable
        # bytes); the sessions are small and copied whole.
        return state_snapshot.encoder(self.sessions.copy(), self.store.copy())

    def on_role_change(self, term: int, is_leader: bool) -> None:
        self.leases.on_role_change(term, is_leader)
        if not is_leader:
            # The budget is a leader's; what it submitted may never be applied now.
            self._inflight.clear()
            self.inflight_bytes = 0
        for index, waiter in list(self._waiters.items()):
            if waiter.term != term or not is_leader:
                del self._waiters[index]
                _fail(waiter, f"leadership lost (now term {term})")


def _fail(waiter: _Waiter, why: str) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(WrongLeader(why))
