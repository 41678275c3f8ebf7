"""The leader's lease clock: when leases expire, and the revocations it proposes.

Which leases exist, their TTLs and their keys are replicated state
(:mod:`kvraft.server.leases`). When one expires is not: only the current
leader decides it, on the node's monotonic clock (``RaftNode.clock``, the
event loop's ``time.monotonic`` in a server process, virtual time in the
simulator; never the wall clock), and it proposes a
:class:`~kvraft.lease_protocol.LeaseExpireOp` through the log. Followers keep
no deadlines.

The rules:

1. A node that becomes leader gives every live lease a deadline of now + its
   full TTL (etcd's rule): it cannot know when the old leader last renewed a
   lease, so no lease may expire early because of a failover; a failover at
   worst lengthens a lease by one TTL.
2. While it leads, applying a grant or a keepalive of a lease sets that
   lease's deadline to the time of applying + TTL; a revoke forgets it.
3. Past a deadline the leader proposes ``LeaseExpireOp(id, renewals)``, with
   the lease's renewal count as its own state machine has it, and the entry
   revokes the lease only if the count is still that when it applies.

Why a keepalive is safe, even against a deposed leader that does not know it
yet. Claim: if a client started a keepalive (or the grant) of a lease at time
``s`` and was told it succeeded, the lease's keys are not deleted by expiry
before ``s + TTL`` (clocks running at the same rate). A keepalive answers
"renewed" only once its entry ``k`` is committed and applied, so the only
renewals a client ever hears of are entries in the log. An expiry deletes
keys only by an entry ``e`` that applies with the renewal count its proposer
P read. Let ``c`` be that count. If ``k`` is before ``e`` in the log and ``k``
is not among the first ``c`` renewals, ``e`` meets a larger count and does
nothing. Otherwise ``k`` is among the ``c`` renewals P had applied when it
decided. If P applied ``k`` while leading, its deadline was at least the time
of applying + TTL, and P applied ``k`` after ``s`` (the entry did not exist
before the client sent it). If P applied ``k`` before it began to lead, rule
1 set the deadline to the start of its leadership + TTL, later still. Either
way P decided at or after ``s + TTL``. If ``k`` is after ``e`` in the log,
``k`` applies to a lease that is gone and answers LeaseNotFound, so the client
was never told "renewed". A deposed leader changes nothing in this argument:
its expiries are entries like any other, and only the committed ones act.
That is why the keepalive goes through the log rather than being answered
from a leader's memory: a stale leader answering from memory could say
"renewed" while the real leader's deadline stands earlier.

The client side of the bargain (``kvraft.client.leases``): it takes a lease
as valid until the *start* of its last successful keepalive + TTL, never from
when the answer came.

Bounds: the leader keeps one float per live lease (at most MAX_LEASES) and
proposes expiries in batches of :data:`EXPIRE_BATCH`, one batch at a time,
waiting for a batch to apply (or for leadership to end) without a timeout:
an entry of a leader's own term either applies or goes with its leadership,
so proposing it again only adds to a log that already commits too slowly
(re-proposing each op timeout grew the log faster than it committed, and
leases outlived their TTL by seconds: lease simulator, seed 10170); it
looks at the clock at least every :data:`CHECK_INTERVAL_S` and waits at
least :data:`MIN_WAIT_S` between looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kvraft.errors import KVError
from kvraft.kv_protocol import DeleteOk, Op, SessionExpiredResult, StaleRequestResult
from kvraft.lease_protocol import (
    LeaseExpireOp,
    LeaseGrantOk,
    LeaseGrantOp,
    LeaseKeepaliveOk,
    LeaseKeepaliveOp,
    LeaseNotFoundResult,
    LeaseRevokeOp,
)
from kvraft.server.leases import LeaseTable

log = logging.getLogger("kvraft.leases")

# The longest the leader goes without looking for expired leases (the expiry
# of a lease is late by at most about this plus a commit).
CHECK_INTERVAL_S = 0.1
# Expiries proposed at once (each its own entry; well under the session window).
EXPIRE_BATCH = 32
# After a failed proposal (not leader, busy), wait this long before trying again.
RETRY_S = 0.05
# The shortest wait for the next deadline. The event loop runs a timer due within its
# clock's resolution without waiting, so a wait of less than that can end a hair
# before the deadline it waited for, again and again; with a clock that only moves
# when the loop sleeps (the simulator's), that spun forever. An expiry is late by at
# most this, never early.
MIN_WAIT_S = 0.001


class LeaseKeeper:
    """The deadlines of one leader and the task that proposes expiries (see module)."""

    def __init__(
        self,
        node_id: int,
        table: Callable[[], LeaseTable],
        propose: Callable[[Op], Awaitable[Any]],
    ) -> None:
        self.node_id = node_id
        self._table = table
        self._propose = propose
        self._now: Callable[[], float] | None = None
        self._running: Callable[[], bool] = lambda: False
        # lease id -> deadline on the node's clock; only while leading.
        self._deadlines: dict[int, float] = {}
        self._term: int | None = None  # the term this node leads in, or None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.expired = 0  # expiries this node proposed that revoked a lease

    def attach(self, now: Callable[[], float], running: Callable[[], bool]) -> None:
        """The node's clock, and whether the node runs (its task stops when it does not)."""
        self._now = now
        self._running = running

    @property
    def leading(self) -> bool:
        return self._term is not None

    def remaining_s(self, lease_id: int) -> float:
        """Seconds left before this leader expires ``lease_id``; -1.0 if it keeps no deadline."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None or self._now is None:
            return -1.0
        return max(0.0, deadline - self._now())

    # -------------------------------------------------------------- the RSM's hooks

    def on_role_change(self, term: int, is_leader: bool) -> None:
        if is_leader and self._term != term and self._now is not None:
            self._stop_task()
            self._term = term
            self.reset()
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(term))
            log.info(
                "n%d [term %d] leading: %d leases get a full TTL from now",
                self.node_id,
                term,
                len(self._deadlines),
            )
        elif not is_leader and self._term is not None:
            self._stop_task()
            self._term = None
            self._deadlines.clear()

    def reset(self) -> None:
        """Every live lease: deadline now + its TTL (rule 1; also after a snapshot restore)."""
        if self._term is None or self._now is None:
            return
        now, table = self._now(), self._table()
        self._deadlines = {}
        for lease_id in table.ids():
            lease = table.get(lease_id)
            assert lease is not None
            self._deadlines[lease_id] = now + lease.ttl
        self._poke()

    def applied(self, op: Op, result: Any) -> None:
        """A command applied (rule 2): start or forget a deadline."""
        if self._term is None or self._now is None:
            return
        if isinstance(op, LeaseGrantOp | LeaseKeepaliveOp) and isinstance(
            result, LeaseGrantOk | LeaseKeepaliveOk
        ):
            if result.lease_id in self._table():
                self._deadlines[result.lease_id] = self._now() + result.ttl
                self._poke()
        elif isinstance(op, LeaseRevokeOp | LeaseExpireOp) and isinstance(
            result, DeleteOk | LeaseNotFoundResult
        ):
            self._deadlines.pop(op.lease_id, None)
        elif isinstance(op, LeaseExpireOp) and isinstance(result, LeaseKeepaliveOk):
            # Renewed after it was proposed: that keepalive's apply set a later
            # deadline already; should it have been missed, a later one is safe.
            deadline = self._deadlines.get(op.lease_id)
            if deadline is not None and deadline <= self._now():
                self._deadlines[op.lease_id] = self._now() + result.ttl

    def stop(self) -> None:
        self._stop_task()
        self._term = None
        self._deadlines.clear()

    # ----------------------------------------------------------------- the task

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, term: int) -> None:
        """Propose the expiry of every lease past its deadline, while leading in ``term``."""
        generation = 0
        session = f"lease-keeper/n{self.node_id}/t{term}"
        request_id = 0
        wake = self._wake
        assert wake is not None and self._now is not None
        while self._running() and self._term == term:
            now = self._now()
            due = sorted(i for i, d in self._deadlines.items() if d <= now)[:EXPIRE_BATCH]
            if due:
                ok = await self._expire(due, session, request_id, term)
                request_id += len(due)
                if ok is None:  # the session was forgotten: a new one
                    generation += 1
                    session = f"lease-keeper/n{self.node_id}/t{term}.{generation}"
                    request_id = 0
                elif not ok:
                    await asyncio.sleep(RETRY_S)
                continue
            wake.clear()
            # Bounded even with no deadline: the task must see the node stop (a halt
            # tells it nothing), and a timer keeps a waiting task referenced.
            soonest = min(self._deadlines.values(), default=now + CHECK_INTERVAL_S)
            wait_s = min(max(soonest - now, MIN_WAIT_S), CHECK_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait_s)

    async def _expire(self, due: list[int], session: str, first_id: int, term: int) -> bool | None:
        """Propose the expiries of ``due`` together; whether all were answered (None:
        the session was forgotten and must be renewed)."""
        table = self._table()
        ops = []
        for offset, lease_id in enumerate(due):
            lease = table.get(lease_id)
            if lease is None:
                self._deadlines.pop(lease_id, None)
                continue
            log.info(
                "n%d [term %d] lease %d expired (ttl %d s, %d keys): proposing its revocation",
                self.node_id,
                term,
                lease_id,
                lease.ttl,
                len(lease.keys),
            )
            # acked_below is the batch's first id: the answers of every earlier
            # batch are in (or given up on: a late copy is refused as stale).
            request_id = first_id + offset + 1
            ops.append(LeaseExpireOp(lease_id, lease.renewals, session, request_id, first_id + 1))
        results = await asyncio.gather(*(self._propose(op) for op in ops), return_exceptions=True)
        ok: bool | None = True
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, SessionExpiredResult | StaleRequestResult):
                ok = None
            elif isinstance(result, KVError):
                ok = ok and False
                log.debug("n%d expiry of lease %d not done: %s", self.node_id, op.lease_id, result)
            elif isinstance(result, BaseException):
                raise result
            elif isinstance(result, DeleteOk):
                self.expired += 1
        return ok
