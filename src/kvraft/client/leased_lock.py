"""The lock with a lease: ``Lock(client, name, ttl=...)``'s implementation, on the AsyncClient.

Holding the lock is being first in the queue of ``__lock__/NAME/``
(:mod:`kvraft.client.lease_queue`): a holder's key lives on a lease kept
alive in the background, so a holder that is SIGKILLed or cut off loses the
lock once its lease expires, within the TTL (plus the leader's check and a
commit), and the next contender in line takes it.

The fencing token is the holder's key's create revision: revisions are
cluster-wide and strictly increasing, so every acquisition's token is larger
than every earlier one's. A resource that remembers the largest token it has
seen and refuses smaller ones (or a txn comparing the key's create revision,
``docs/locks.md``) is what makes the lock safe against a holder that was
paused past its lease and still believes it holds the lock: the lock alone
cannot stop a paused process from acting when it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from kvraft.client.lease_queue import Contender
from kvraft.errors import KVError

if TYPE_CHECKING:
    from kvraft.client.async_client import AsyncClient
    from kvraft.client.leases import KeptLease


class AsyncLeasedLock:
    """One holder of ``__lock__/NAME/`` on a lease of ``ttl`` seconds (see the module)."""

    def __init__(self, client: AsyncClient, name: str, ttl: int, holder_id: str) -> None:
        self.client = client
        self.prefix = f"__lock__/{name}/"
        self.ttl = ttl
        self.holder_id = holder_id
        self.token: int | None = None
        self._lease: KeptLease | None = None
        self._contender: Contender | None = None

    @property
    def lost(self) -> bool:
        """Whether the lease under a held lock was lost: stop acting as the holder."""
        return self._lease is not None and self.token is not None and self._lease.lost

    @property
    def key(self) -> str | None:
        return None if self._contender is None else self._contender.key

    async def _join(self) -> Contender:
        lease = self.client.lease(self.ttl)
        await lease.start()
        self._lease = lease
        try:
            contender = Contender(self.client, self.prefix, lease)
            await contender.join(self.holder_id)
        except BaseException:
            await self._leave()
            raise
        self._contender = contender
        return contender

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait (by watch) until first in line; the fencing token.

        TimeoutError after ``timeout`` seconds (and nothing is left queued).
        """
        if self.token is not None:
            raise RuntimeError(f"{self.prefix!r} is already held by this Lock")
        contender = await self._join()
        try:
            await asyncio.wait_for(contender.wait_first(), timeout)
        except TimeoutError:
            await self._leave()
            raise TimeoutError(f"lock {self.prefix!r} not acquired within {timeout}s") from None
        except BaseException:
            await self._leave()
            raise
        self.token = contender.create_revision
        return self.token

    async def try_acquire(self) -> int | None:
        """The token if the lock is free now, else None (and nothing is left queued)."""
        if self.token is not None:
            raise RuntimeError(f"{self.prefix!r} is already held by this Lock")
        contender = await self._join()
        try:
            first = await contender.first()
        except BaseException:
            await self._leave()
            raise
        if not first:
            await self._leave()
            return None
        self.token = contender.create_revision
        return self.token

    async def release(self) -> None:
        """Leave: revoke the lease, which deletes the key (the next in line takes over)."""
        await self._leave()

    async def _leave(self) -> None:
        lease, self._lease, self._contender, self.token = self._lease, None, None, None
        if lease is not None:
            with contextlib.suppress(KVError):  # else it expires by its TTL
                await lease.stop()
