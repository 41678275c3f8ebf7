"""Lock: a mutual-exclusion lock built only from versioned get/put.

The lock is one key whose value is the holder's identity ("" when free). To
acquire, a holder reads the key and, if it is free (or missing), puts its own
identity at the version it read: versioned puts make exactly one contender win
each version. ``Maybe`` is resolved by reading who holds the lock: if our
identity is there, the resent put did apply.

``acquire()`` never leaves a holder nobody owns. A put of ours at version
``v`` can apply only while the key is at ``v``, so once a read shows the key
past ``v`` (or holding us) the put's fate is settled. When the acquiring put
ends with its outcome unknown (``Maybe``, ``Unavailable``, ``ClientClosed``),
acquire reads the holder until it is settled: us → acquire returns the token
as usual (we hold it; the caller releases it); someone else or free past
``v`` → not acquired, acquire carries on polling; still free at ``v`` → the
put is sent again. If the read fails too, acquire raises
:class:`~kvraft.errors.LockStateUnknown`, which says the lock MAY be held by
:attr:`Lock.holder_id` and carries what :meth:`release` needs to clean up:
``release()`` on the same Lock (or ``Lock.recover(new_client, error)``)
frees it if we hold it, and otherwise settles the put by moving the key past
its version, so that it can no longer apply.

``acquire()`` returns a fencing token: the key's version after the acquiring
put. Every acquisition and release bumps the version, so tokens grow with
every acquisition; a resource guarded by the lock can refuse requests that
carry a token older than the newest it has seen.

Limits, honestly: without a ``ttl`` there is no lease. A holder that dies (or
is partitioned away for good) holds the lock until someone calls
:meth:`Lock.force_release` or releases it with the same identity. A holder
that is paused (GC, swap) keeps believing it holds the lock; fencing tokens
are the defence against that.

With ``ttl=N`` (seconds) the lock is another mechanism altogether
(:mod:`kvraft.client.leased_lock`): the holder's key lives on a lease kept
alive in the background, a dead or cut-off holder loses the lock within the
TTL, waiting is a watch, and the token is the key's create revision. The two
kinds do not exclude each other: use one name with a ttl or without, never
both. ``docs/locks.md`` says what either can and cannot promise.
"""

from __future__ import annotations

import time
import uuid
from types import TracebackType

from kvraft.client.client import Client
from kvraft.client.leased_lock import AsyncLeasedLock
from kvraft.errors import ClientClosed, LockStateUnknown, Maybe, NoKey, Unavailable, VersionMismatch

FREE = ""
POLL_S = 0.01
MAX_POLL_S = 0.1


class LockNotHeld(RuntimeError):
    """``release()`` was called by a holder that does not hold the lock."""


class Lock:
    """A named lock in a kvraft cluster. Not reentrant; one Lock object = one holder."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        holder_id: str | None = None,
        ttl: int | None = None,
    ) -> None:
        """``ttl``: hold the lock on a lease of that many seconds (module docstring)."""
        self.client = client
        self.key = f"__lock__/{name}"
        self.holder_id = holder_id or f"{client.client_id}/{uuid.uuid4().hex}"
        self.token: int | None = None
        # The version of an acquiring put of ours that may still apply; None when
        # settled. Set only when acquire raised LockStateUnknown.
        self.unsettled_version: int | None = None
        self.ttl = ttl
        self._leased = (
            AsyncLeasedLock(client.async_client, name, ttl, self.holder_id)
            if ttl is not None
            else None
        )

    @property
    def lost(self) -> bool:
        """With a ttl: whether the lease of the held lock was lost (stop acting as holder).

        Always False without a ttl (such a lock is never lost, only stolen by
        force_release)."""
        return self._leased is not None and self._leased.lost

    @property
    def fence_key(self) -> str | None:
        """With a ttl, while held: this holder's key, whose create revision is the token, so
        ``Compare(lock.fence_key, "create_revision", "==", token)`` in a txn makes a write
        apply only while this holder still holds the lock (docs/locks.md). None otherwise."""
        if self._leased is None or self.token is None:
            return None
        return self._leased.key

    @classmethod
    def recover(cls, client: Client, error: LockStateUnknown) -> Lock:
        """The Lock that ``error`` left unsettled, on ``client``: call ``release()`` on it.

        For when the Lock's own client is closed (``ClientClosed`` mid-put).
        """
        prefix = "__lock__/"
        assert error.key.startswith(prefix), error.key
        lock = cls(client, error.key[len(prefix) :], holder_id=error.holder_id)
        lock.unsettled_version = error.version
        return lock

    def _read(self) -> tuple[str, int]:
        try:
            return self.client.get(self.key)
        except NoKey:
            return FREE, 0

    def try_acquire(self) -> int | None:
        """One attempt: the fencing token if acquired now, None if someone else holds it."""
        if self._leased is not None:
            self.token = self.client.run(self._leased.try_acquire())
            return self.token
        holder, version = self._read()
        if self.unsettled_version is not None and (
            holder == self.holder_id or version > self.unsettled_version
        ):
            self.unsettled_version = None  # that earlier put's fate is settled
        if holder == self.holder_id:  # a Maybe of ours that had applied
            self.token = version
            return version
        if holder != FREE:
            return None
        return self._put_holder(version)

    def _put_holder(self, version: int) -> int | None:
        """Put our identity at ``version``: the token, or None if someone else won.

        Returns or raises only once the put can no longer apply unseen (see
        the module docstring); LockStateUnknown when that cannot be known.
        """
        while True:
            try:
                self.token = self.client.put(self.key, self.holder_id, version)
                return self.token
            except VersionMismatch:
                return None  # the key is past version: this put can never apply
            except (Maybe, Unavailable, ClientClosed) as exc:
                cause: Exception = exc
            try:
                holder, now = self._read()
            except (Unavailable, ClientClosed) as exc:
                self.unsettled_version = version
                raise LockStateUnknown(
                    f"lock {self.key!r} may be held by {self.holder_id!r}: its acquiring "
                    f"put ({cause}) may have applied and the holder cannot be read ({exc}); "
                    "release() it (Lock.recover(client, error) with a new client)",
                    key=self.key,
                    holder_id=self.holder_id,
                    version=version,
                ) from cause
            if holder == self.holder_id:
                self.token = now
                return now
            if now > version:
                return None  # someone else's put moved the key on: ours cannot apply
            # Still free at version: ours has not applied yet and still may; send again.

    def acquire(self, timeout: float | None = None) -> int:
        """Block until the lock is held; return the fencing token.

        Raises TimeoutError if ``timeout`` seconds pass first.
        """
        if self._leased is not None:
            self.token = self.client.run(self._leased.acquire(timeout))
            return self.token
        give_up = None if timeout is None else time.monotonic() + timeout
        poll = POLL_S
        while True:
            token = self.try_acquire()
            if token is not None:
                return token
            if give_up is not None and time.monotonic() >= give_up:
                raise TimeoutError(f"lock {self.key!r} not acquired within {timeout}s")
            time.sleep(poll)
            poll = min(poll * 2, MAX_POLL_S)

    def release(self) -> None:
        """Free the lock; LockNotHeld if this holder does not hold it.

        After ``acquire`` raised LockStateUnknown, release settles that
        acquisition instead: it frees the lock if we hold it and returns
        quietly if we do not, having first made sure (a put of the free value
        at the put's version) that the acquiring put can no longer apply.
        With a ttl: revokes the lease (deleting the key), whether or not it was lost.
        """
        if self._leased is not None:
            self.client.run(self._leased.release())
            self.token = None
            return
        maybe_released = False
        while True:
            holder, version = self._read()
            if holder != self.holder_id and self.unsettled_version is not None:
                if version == self.unsettled_version and not self._fence(version):
                    continue
                self.unsettled_version = None  # the key is past our put's version
                self.token = None
                return
            if holder != self.holder_id:
                self.token = None
                if maybe_released:  # our resent put did apply
                    return
                raise LockNotHeld(f"{self.holder_id} does not hold {self.key!r}")
            try:
                self.client.put(self.key, FREE, version)
                self.token = None
                self.unsettled_version = None
                return
            except Maybe:
                maybe_released = True  # still ours on re-read means it did not apply
            except VersionMismatch:
                continue

    def _fence(self, version: int) -> bool:
        """Move the free key past ``version`` so that no put at it can apply; False: re-read."""
        try:
            self.client.put(self.key, FREE, version)
            return True
        except (Maybe, VersionMismatch):
            return False  # the key moved (perhaps by this very put): read again

    def force_release(self) -> None:
        """Free the lock whoever holds it (operator recovery from a dead holder).

        Without a ttl only; a leased lock frees itself.
        """
        if self._leased is not None:
            raise RuntimeError("a lock with a ttl frees itself: its holder's lease expires")
        while True:
            holder, version = self._read()
            if holder == FREE:
                return
            try:
                self.client.put(self.key, FREE, version)
                return
            except (Maybe, VersionMismatch):
                continue

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
