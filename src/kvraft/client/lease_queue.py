"""A queue of contenders on a prefix, each a key on its own lease: the core of the recipes.

``Lock(client, name, ttl=...)`` and :class:`~kvraft.Election` are both
"whoever created their key first goes first", as etcd's concurrency package
does it:

- a contender holds a lease (kept alive in the background,
  :class:`~kvraft.client.leases.KeptLease`) and creates its own key
  ``PREFIX + <lease id in hex>`` on it, in a txn that creates it only if it
  does not exist (so a resent attempt finds its own key rather than making a
  second one);
- the key's create revision is its place in the queue: revisions are
  cluster-wide and strictly increasing, so places are unique and a later
  contender always queues behind an earlier one;
- the contender with the smallest create revision among the live keys is
  first; each other contender watches only the key just before its own
  (no herd: one deletion wakes one waiter) and, when that key is deleted,
  reads the queue again (the one before may have left while an earlier one
  is still there);
- a contender that dies stops renewing; its lease expires within the TTL
  and the revocation deletes its key, which is the deletion its successor
  is watching for.

Waiting never polls: it is a watch from the revision the queue was read at,
so a deletion between the read and the watch is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from kvraft.errors import Compacted, KVError
from kvraft.kv_protocol import Compare, KeyValue, RangeResult, TxnGet, TxnSet, prefix_end

if TYPE_CHECKING:
    from kvraft.client.async_client import AsyncClient
    from kvraft.client.leases import KeptLease


class LeaseLost(KVError):
    """The contender's lease was lost (expired, revoked, not renewed in time) while it waited."""


async def read_queue(client: AsyncClient, prefix: str) -> tuple[list[KeyValue], int]:
    """Every key of ``prefix`` (all pages), sorted by create revision; the revision read at.

    One page is one linearizable read; a queue longer than one page is read
    at several revisions, which is harmless here: keys only join behind the
    existing ones, and a contender re-reads after every change it waits for.
    """
    kvs: list[KeyValue] = []
    start, end = prefix, prefix_end(prefix)
    revision = 0
    while True:
        page: RangeResult = await client.range(start=start, end=end)
        kvs.extend(page.kvs)
        revision = max(revision, page.revision)
        if not page.more or not page.kvs:
            break
        start = page.kvs[-1].key + "\0"
    kvs.sort(key=lambda kv: kv.create_revision)
    return kvs, revision


class Contender:
    """One place in a queue: a key on a kept lease (see the module docstring)."""

    def __init__(self, client: AsyncClient, prefix: str, lease: KeptLease) -> None:
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.key = f"{prefix}{lease.id:016x}"
        self.create_revision = 0

    async def join(self, value: str) -> int:
        """Create this contender's key with ``value`` (once); its create revision."""
        result = await self.client.txn(
            compare=[Compare(self.key, "create_revision", "==", 0)],
            success=[TxnSet(self.key, value, lease=self.lease.id)],
            failure=[TxnGet(self.key)],
        )
        if result.succeeded:
            self.create_revision = result.revision
        else:
            read = result.responses[0]
            assert isinstance(read, RangeResult) and read.kvs, read
            self.create_revision = read.kvs[0].create_revision
        return self.create_revision

    async def first(self) -> bool:
        """Whether this contender is first now; LeaseLost if its key is gone."""
        kvs, _ = await read_queue(self.client, self.prefix)
        return self._predecessor(kvs) is None

    def _predecessor(self, kvs: list[KeyValue]) -> KeyValue | None:
        if not any(kv.key == self.key for kv in kvs):
            raise LeaseLost(f"{self.key!r} is gone: its lease expired or was revoked")
        earlier = [kv for kv in kvs if kv.create_revision < self.create_revision]
        return earlier[-1] if earlier else None

    async def wait_first(self) -> None:
        """Return once this contender is first; LeaseLost if its lease is lost first."""
        lost = asyncio.ensure_future(self.lease.wait_lost())
        try:
            while True:
                kvs, revision = await read_queue(self.client, self.prefix)
                before = self._predecessor(kvs)
                if before is None:
                    return
                gone = asyncio.ensure_future(self._deleted(before.key, revision + 1))
                try:
                    await asyncio.wait({gone, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not gone.done():
                        gone.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await gone
                if lost.done():
                    raise LeaseLost(f"lease {self.lease.id} lost while waiting: {lost.result()}")
                gone.result()  # an error of the watch (Unavailable, ClientClosed) is raised
        finally:
            lost.cancel()

    async def _deleted(self, key: str, from_revision: int) -> None:
        """Return when ``key`` is deleted at or after ``from_revision``."""
        events = self.client.watch(key, start_revision=from_revision)
        try:
            async for event in events:
                if event.type == "delete":
                    return
        except Compacted:
            return  # the history moved on: read the queue again
        finally:
            await events.aclose()  # type: ignore[attr-defined]
