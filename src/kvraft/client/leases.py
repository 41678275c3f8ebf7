"""The client's lease calls, and a lease kept alive in the background.

:class:`LeaseCalls` is part of :class:`~kvraft.AsyncClient` (a mixin, so that
the client's one retry/session loop, ``_in_session``, carries these calls
too): ``lease_grant``, ``lease_keepalive``, ``lease_revoke``, ``lease_ttl``
and ``lease(ttl)``. The sync :class:`~kvraft.Client` wraps them as it wraps
the rest.

What a successful keepalive promises (the server side's argument is in
``kvraft.server.lease_keeper``): the lease's keys will not be deleted by
expiry before the keepalive's *start* + TTL. So :class:`KeptLease` counts
its lease valid until the start of its last successful keepalive (the grant
at first) + TTL, on the event loop's monotonic clock, and not a moment from
when an answer arrived. It renews every TTL/3; if no renewal succeeds before
that validity ends, or the server says the lease is gone, the lease is
*lost*: :attr:`KeptLease.lost` is set (with :attr:`KeptLease.lost_reason`)
and :meth:`KeptLease.wait_lost` returns. The keys may still exist for a
while after that; what is lost is the client's certainty, and a holder of a
lock on this lease must stop acting as the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kvraft.errors import (
    ClientClosed,
    InvalidArgument,
    KVError,
    LeaseLimit,
    LeaseNotFound,
    ProtocolError,
)
from kvraft.kv_protocol import DeleteOk, Op
from kvraft.lease_protocol import (
    LeaseGrantOk,
    LeaseGrantOp,
    LeaseKeepaliveOk,
    LeaseKeepaliveOp,
    LeaseLimitResult,
    LeaseNotFoundResult,
    LeaseRevokeOp,
    LeaseTtlOp,
    LeaseTtlResult,
    check_ttl_error,
    lease_id_error,
)

log = logging.getLogger("kvraft.client")

# A kept lease renews this many times per TTL; after a failed renewal it tries
# again this soon (while the lease is still valid).
KEEPALIVES_PER_TTL = 3
KEEPALIVE_RETRY_S = 0.2
_NOT_RENEWED = "not renewed within its TTL"


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its ``id`` (attach keys with ``lease=id``) and ``ttl`` in seconds."""

    id: int
    ttl: int


def raise_for_lease_result(result: object) -> None:
    """Raise the user-facing error a lease refusal stands for; nothing for other results."""
    if isinstance(result, LeaseNotFoundResult):
        raise LeaseNotFound(
            f"lease {result.lease_id} not found (expired, revoked or never granted)",
            lease_id=result.lease_id,
        )
    if isinstance(result, LeaseLimitResult):
        raise LeaseLimit(result.message)


def _check_id(lease_id: object) -> None:
    why = lease_id_error(lease_id)
    if why is not None:
        raise InvalidArgument(why)


class LeaseCalls:
    """The lease methods of AsyncClient (see the module docstring)."""

    async def _in_session(
        self,
        method: str,
        build: Callable[[str, int, int], Op],
        uncertain: list[bool] | None = None,
    ) -> Any:
        raise NotImplementedError  # AsyncClient's

    async def lease_grant(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` whole seconds (2 s to 30 days); it lives that long unless
        renewed with :meth:`lease_keepalive`. Raises LeaseLimit if too many leases are live."""
        why = check_ttl_error(ttl)
        if why is not None:
            raise InvalidArgument(why)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return LeaseGrantOp(ttl, session, request_id, acked_below)

        result = await self._in_session("lease_grant", build)
        raise_for_lease_result(result)
        if not isinstance(result, LeaseGrantOk):
            raise ProtocolError(f"not a lease grant result: {type(result).__name__}")
        return Lease(result.lease_id, result.ttl)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease for its TTL, counted from when this call started; returns the TTL.

        Raises LeaseNotFound if it expired or was revoked (it cannot come back).
        """
        _check_id(lease_id)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return LeaseKeepaliveOp(lease_id, session, request_id, acked_below)

        result = await self._in_session("lease_keepalive", build)
        raise_for_lease_result(result)
        if not isinstance(result, LeaseKeepaliveOk):
            raise ProtocolError(f"not a keepalive result: {type(result).__name__}")
        return result.ttl

    async def lease_revoke(self, lease_id: int) -> int:
        """Revoke the lease and delete its keys (one revision); returns how many keys it deleted.

        Raises LeaseNotFound if there was no such lease, unless an earlier
        attempt of this call may have revoked it (then 0): either way it is gone.
        """
        _check_id(lease_id)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return LeaseRevokeOp(lease_id, session, request_id, acked_below)

        outcomes: list[bool] = []
        result = await self._in_session("lease_revoke", build, outcomes)
        if isinstance(result, LeaseNotFoundResult) and any(outcomes):
            return 0
        raise_for_lease_result(result)
        if not isinstance(result, DeleteOk):
            raise ProtocolError(f"not a revoke result: {type(result).__name__}")
        return result.deleted

    async def lease_ttl(self, lease_id: int, keys: bool = False) -> LeaseTtlResult:
        """The lease's granted TTL, the seconds the leader gives it still (``remaining_s``),
        and, with ``keys``, its keys in order. Raises LeaseNotFound if it is gone."""
        _check_id(lease_id)
        if type(keys) is not bool:
            raise InvalidArgument(f"keys must be bool, not {keys!r}")

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return LeaseTtlOp(lease_id, keys, session, request_id, acked_below)

        result = await self._in_session("lease_ttl", build)
        raise_for_lease_result(result)
        if not isinstance(result, LeaseTtlResult):
            raise ProtocolError(f"not a lease ttl result: {type(result).__name__}")
        return result

    def lease(self, ttl: int) -> KeptLease:
        """``async with client.lease(ttl) as lease:`` a lease kept alive until the block ends
        (then revoked); ``lease.lost`` says if it was lost meanwhile."""
        why = check_ttl_error(ttl)
        if why is not None:
            raise InvalidArgument(why)
        return KeptLease(self, ttl)


class KeptLease:
    """A lease renewed in the background every TTL/3 while the ``async with`` block runs.

    ``id`` and ``ttl`` once entered. ``lost`` turns True (for good) when the
    lease expired, was revoked by someone else, or could not be renewed
    before the last renewal's start + TTL; ``lost_reason`` says which, and
    ``await wait_lost()`` waits for it. On exit the lease is revoked (its keys
    deleted); if the cluster cannot be reached then, it expires by its TTL.
    """

    def __init__(self, client: LeaseCalls, ttl: int) -> None:
        self._client = client
        self.ttl = ttl
        self.id = 0
        self.lost_reason: str | None = None
        # The loop-clock time until which the lease is surely live.
        self.valid_until = 0.0
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def remaining_s(self) -> float:
        """Seconds the lease is surely live still, by this client's count (0 once lost)."""
        if self.lost:
            return 0.0
        return max(0.0, self.valid_until - asyncio.get_running_loop().time())

    async def wait_lost(self) -> str:
        """Wait until the lease is lost; the reason."""
        await self._lost.wait()
        assert self.lost_reason is not None
        return self.lost_reason

    async def start(self) -> KeptLease:
        """Grant the lease and start renewing it (what ``async with`` does on entry)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        lease = await self._client.lease_grant(self.ttl)
        self.id = lease.id
        self.valid_until = started + lease.ttl
        self._task = loop.create_task(self._keep())
        return self

    async def stop(self, revoke: bool = True) -> None:
        """Stop renewing and revoke the lease (what leaving ``async with`` does)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self.id and self.lost_reason in (None, _NOT_RENEWED):
            try:
                await self._client.lease_revoke(self.id)
            except LeaseNotFound:
                pass
            except KVError as exc:
                log.warning("lease %d not revoked (%s): it expires by its TTL", self.id, exc)
            self._lose("revoked")

    def _lose(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            if reason != "revoked":
                log.warning("lease %d lost: %s", self.id, reason)
            self._lost.set()

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / KEEPALIVES_PER_TTL
        wait_s = interval
        while True:
            await asyncio.sleep(max(0.0, min(wait_s, self.valid_until - loop.time())))
            started = loop.time()
            remaining = self.valid_until - started
            if remaining <= 0:
                self._lose(_NOT_RENEWED)
                return
            try:
                ttl = await asyncio.wait_for(self._client.lease_keepalive(self.id), remaining)
            except TimeoutError:
                self._lose(_NOT_RENEWED)
                return
            except LeaseNotFound:
                self._lose("expired or revoked on the cluster")
                return
            except ClientClosed:
                self._lose("the client was closed")
                return
            except KVError as exc:  # Unavailable within the client's deadline: try again soon
                log.info("lease %d keepalive failed (%s); retrying", self.id, exc)
                wait_s = KEEPALIVE_RETRY_S
                continue
            self.valid_until = started + ttl
            wait_s = interval

    async def __aenter__(self) -> KeptLease:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
