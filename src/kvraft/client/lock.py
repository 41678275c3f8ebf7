"""Lock: a mutual-exclusion lock built only from versioned get/put.

The lock is one key whose value is the holder's identity ("" when free). To
acquire, a holder reads the key and, if it is free (or missing), puts its own
identity at the version it read: versioned puts make exactly one contender win
each version. ``Maybe`` is resolved by reading who holds the lock: if our
identity is there, the resent put did apply.

``acquire()`` returns a fencing token: the key's version after the acquiring
put. Every acquisition and release bumps the version, so tokens grow with
every acquisition; a resource guarded by the lock can refuse requests that
carry a token older than the newest it has seen.

Limits, honestly: there is no lease. A holder that dies (or is partitioned away
for good) holds the lock until someone calls :meth:`Lock.force_release` or
releases it with the same identity. A holder that is paused (GC, swap) keeps
believing it holds the lock; fencing tokens are the defence against that.
"""

from __future__ import annotations

import time
import uuid
from types import TracebackType

from kvraft.client.client import Client
from kvraft.errors import Maybe, NoKey, VersionMismatch

FREE = ""
POLL_S = 0.01
MAX_POLL_S = 0.1


class LockNotHeld(RuntimeError):
    """``release()`` was called by a holder that does not hold the lock."""


class Lock:
    """A named lock in a kvraft cluster. Not reentrant; one Lock object = one holder."""

    def __init__(self, client: Client, name: str, *, holder_id: str | None = None) -> None:
        self.client = client
        self.key = f"__lock__/{name}"
        self.holder_id = holder_id or f"{client.client_id}/{uuid.uuid4().hex}"
        self.token: int | None = None

    def _read(self) -> tuple[str, int]:
        try:
            return self.client.get(self.key)
        except NoKey:
            return FREE, 0

    def try_acquire(self) -> int | None:
        """One attempt: the fencing token if acquired now, None if someone else holds it."""
        holder, version = self._read()
        if holder == self.holder_id:  # a Maybe of ours that had applied
            self.token = version
            return version
        if holder != FREE:
            return None
        try:
            self.token = self.client.put(self.key, self.holder_id, version)
            return self.token
        except VersionMismatch:
            return None
        except Maybe:
            holder, version = self._read()
            if holder == self.holder_id:
                self.token = version
                return version
            return None

    def acquire(self, timeout: float | None = None) -> int:
        """Block until the lock is held; return the fencing token.

        Raises TimeoutError if ``timeout`` seconds pass first.
        """
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
        """Free the lock; LockNotHeld if this holder does not hold it."""
        maybe_released = False
        while True:
            holder, version = self._read()
            if holder != self.holder_id:
                self.token = None
                if maybe_released:  # our resent put did apply
                    return
                raise LockNotHeld(f"{self.holder_id} does not hold {self.key!r}")
            try:
                self.client.put(self.key, FREE, version)
                self.token = None
                return
            except Maybe:
                maybe_released = True  # still ours on re-read means it did not apply
            except VersionMismatch:
                continue

    def force_release(self) -> None:
        """Free the lock whoever holds it (operator recovery from a dead holder)."""
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
