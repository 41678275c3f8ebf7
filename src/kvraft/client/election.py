"""Leader election on leases, create revisions and watch (etcd's concurrency ``Election``).

``Election(client, name)``: ``campaign(value)`` blocks until this candidate
leads, ``leader()`` reads who leads, ``observe()`` iterates over the leader's
values as they change, ``resign()`` steps down. The candidates of an election
are a queue (:mod:`kvraft.client.lease_queue`) under
``__election__/NAME/``: each candidate's key holds its value on its own lease,
kept alive while it campaigns or leads; the leader is the live key with the
smallest create revision. So there is at most one leader at a time as the
cluster sees it, and when a leader dies its lease expires (within the TTL)
and the next candidate takes over.

As for locks (``docs/locks.md``), "at most one" holds for the cluster's
view: a leader paused past its lease may act on its belief when it wakes. A
leader checks :attr:`Election.lost`, and what it directs can check its
:attr:`Election.revision` (its key's create revision, larger for every new
leader) the way a resource checks a lock's fencing token.

:class:`AsyncElection` is the implementation, on an AsyncClient;
:class:`Election` its blocking face on a :class:`~kvraft.Client`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from kvraft.client.lease_queue import Contender, LeaseLost, read_queue
from kvraft.errors import Compacted, KVError

if TYPE_CHECKING:
    from kvraft.client.async_client import AsyncClient
    from kvraft.client.client import Client
    from kvraft.client.leases import KeptLease

DEFAULT_ELECTION_TTL_S = 10

__all__ = ["AsyncElection", "Election", "LeaseLost"]


class AsyncElection:
    """One candidate of election ``name`` on an AsyncClient (see the module docstring)."""

    def __init__(
        self, client: AsyncClient, name: str, *, ttl: int = DEFAULT_ELECTION_TTL_S
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = f"__election__/{name}/"
        self.ttl = ttl
        # This candidate's key's create revision once it leads, else None.
        self.revision: int | None = None
        self._lease: KeptLease | None = None

    @property
    def lost(self) -> bool:
        """Whether this candidate led and its lease was lost since (it no longer leads)."""
        return self._lease is not None and self.revision is not None and self._lease.lost

    async def campaign(self, value: str) -> int:
        """Block until this candidate leads, announcing ``value``; its key's create revision.

        Raises LeaseLost if its lease is lost while it waits; cancelled (or
        failed), it leaves the queue.
        """
        if self._lease is not None:
            raise RuntimeError(f"already campaigning in {self.name!r}")
        lease = self.client.lease(self.ttl)
        await lease.start()
        self._lease = lease
        try:
            contender = Contender(self.client, self.prefix, lease)
            await contender.join(value)
            await contender.wait_first()
        except BaseException:
            await self._leave()
            raise
        self.revision = contender.create_revision
        return self.revision

    async def leader(self) -> str | None:
        """The leader's value, or None if nobody leads."""
        kvs, _ = await read_queue(self.client, self.prefix)
        return kvs[0].value if kvs else None

    async def observe(self) -> AsyncIterator[str | None]:
        """The leader's value now, then each time the leader (or its value) changes.

        None while nobody leads. Waits by watching the election's prefix.
        """
        last: tuple[str, str] | None = None
        first = True
        while True:
            kvs, revision = await read_queue(self.client, self.prefix)
            now = (kvs[0].key, kvs[0].value) if kvs else None
            if first or now != last:
                first = False
                last = now
                yield None if now is None else now[1]
            events = self.client.watch(prefix=self.prefix, start_revision=revision + 1)
            try:
                await anext(events)  # any change: read the queue again
            except Compacted:
                pass
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    async def resign(self) -> None:
        """Step down (or stop campaigning): revoke the lease, deleting this candidate's key."""
        await self._leave()

    async def _leave(self) -> None:
        lease, self._lease, self.revision = self._lease, None, None
        if lease is not None:
            with contextlib.suppress(KVError):  # else it expires by its TTL
                await lease.stop()


class Election:
    """The blocking face of :class:`AsyncElection` on a :class:`~kvraft.Client`."""

    def __init__(self, client: Client, name: str, *, ttl: int = DEFAULT_ELECTION_TTL_S) -> None:
        self.client = client
        self._async = AsyncElection(client.async_client, name, ttl=ttl)

    @property
    def name(self) -> str:
        return self._async.name

    @property
    def revision(self) -> int | None:
        """This candidate's key's create revision while it leads."""
        return self._async.revision

    @property
    def lost(self) -> bool:
        return self._async.lost

    def campaign(self, value: str, timeout: float | None = None) -> int:
        """Block until elected (TimeoutError after ``timeout``); the create revision."""

        async def run() -> int:
            return await asyncio.wait_for(self._async.campaign(value), timeout)

        return self.client.run(run())

    def leader(self) -> str | None:
        return self.client.run(self._async.leader())

    def observe(self) -> Iterator[str | None]:
        """The leader's value now and at each change (an iterator; close it to stop)."""
        values = self._async.observe()
        try:
            while True:
                yield self.client.run(anext(values))  # type: ignore[arg-type]
        finally:
            self.client.run(values.aclose())  # type: ignore[attr-defined]

    def resign(self) -> None:
        self.client.run(self._async.resign())
