"""Errors, grouped by whose fault they are.

User-facing errors all subclass :class:`KVError`. Wire errors (a peer sent bad
bytes) are :class:`ProtocolError`; they close the offending connection and are
never raised to users of :class:`kvraft.Client`.
"""

from __future__ import annotations


class KVError(Exception):
    """Base of every error a kvraft user can see."""


class NoKey(KVError):
    """The key does not exist (a get, or a put at a version > 0)."""


class VersionMismatch(KVError):
    """The put's version is not the key's current version; nothing changed."""


class Maybe(KVError):
    """A resent put answered VersionMismatch: the first attempt may have applied."""


class WrongLeader(KVError):
    """The server is not the leader, or lost leadership while the op waited."""


class NotLeader(WrongLeader):
    """The server is not the leader and did not submit the operation: it surely did not apply."""


class Busy(KVError):
    """The leader has too many proposals or bytes in flight and did not submit the operation.

    The operation surely did not apply; the client backs off and retries, and
    turns this into Unavailable once its deadline has passed.
    """


class Unauthorized(KVError):
    """The server refused the request for its credentials; nothing was run.

    No token, a token the server does not know, a token whose role does not
    allow the method (``read`` < ``readwrite`` < ``admin``), or a plaintext
    connection where TLS is required. Not retried: the same credentials
    would be refused again.
    """


class Unavailable(KVError):
    """The client gave up after its deadline without an answer."""


class ClientClosed(KVError, RuntimeError):
    """The client was closed: a call in flight when it closed, or begun after, ends with this.

    A put that ends with it may have applied (it may have been in flight).
    Also a ``RuntimeError``, the error closed clients raised before it existed,
    so ``except RuntimeError`` keeps working.
    """


class LockStateUnknown(KVError):
    """``Lock.acquire`` failed while its put may still apply: the lock MAY be held by us.

    Raised when the acquiring put's outcome is unknown (``Maybe``,
    ``Unavailable``, ``ClientClosed``) and reading the holder failed too, so the
    lock may be held, now or later, by ``holder_id``. To clean up, call
    ``release()`` on the same ``Lock`` once the cluster answers, or, if its
    client is closed, ``Lock.recover(client, error).release()`` with a new one:
    it frees the lock if ``holder_id`` holds it and otherwise makes sure the
    put (at ``version``) can no longer apply.
    """

    def __init__(self, message: str, *, key: str, holder_id: str, version: int) -> None:
        super().__init__(message)
        self.key = key
        self.holder_id = holder_id
        self.version = version


class Compacted(KVError):
    """A watch started (or resumed) below the kept history: ``first_revision`` is the oldest.

    The history is bounded (``--history-revisions``, its byte bound) and
    ``compact(revision)`` drops what is older; a replica restarted from a
    snapshot keeps history only from its snapshot on. Watch again from
    ``first_revision`` (after reading the current state with ``range``) to
    carry on: the events between are gone.
    """

    def __init__(self, message: str, *, first_revision: int) -> None:
        super().__init__(message)
        self.first_revision = first_revision


class LeaseNotFound(KVError):
    """No live lease has id ``lease_id``: never granted, revoked, or expired; nothing applied.

    Raised by ``lease_keepalive``/``lease_revoke``/``lease_ttl`` and by a
    put, set or txn that attaches a key to the lease.
    """

    def __init__(self, message: str, *, lease_id: int) -> None:
        super().__init__(message)
        self.lease_id = lease_id


class LeaseLimit(KVError):
    """A lease bound would be passed (live leases, keys per lease); nothing applied."""


class InvalidArgument(KVError):
    """The caller passed a bad key, value or version; nothing was sent or applied."""


class RpcError(KVError):
    """A remote call failed in the RPC layer (not an answer of the service)."""


class ConnectionLost(RpcError):
    """The connection closed or could not be opened; the call may or may not have run."""


class NotSent(ConnectionLost):
    """The request was never handed to a connection, so the server surely did not run it.

    The client counts such an attempt as surely not applied: only attempts
    whose outcome is unknown (written, then no answer) can make a put ``Maybe``.
    """


class ConnectFailed(NotSent):
    """The connection could not be opened (refused, unreachable, connect timed out)."""


class CallTimeout(RpcError):
    """No reply within the call's timeout; the call may or may not have run."""


class ConnectTimeout(CallTimeout, NotSent):
    """The call's timeout passed while still connecting: nothing was sent."""


class RemoteError(RpcError):
    """The server answered with an error that has no more specific class.

    ``code`` names the error kind (``unknown_method``, ``bad_request``,
    ``internal``, ...); ``message`` says what went wrong.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """Bytes from the network that do not form a valid frame or message."""


class StorageError(Exception):
    """The data dir cannot be used (another node's or cluster's, newer format, corrupt)."""


# Service errors that travel over the wire by name and are re-raised as themselves.
WIRE_ERRORS: dict[str, type[KVError]] = {
    cls.__name__: cls
    for cls in (
        NoKey,
        VersionMismatch,
        WrongLeader,
        NotLeader,
        InvalidArgument,
        Busy,
        Unauthorized,
    )
}


def one_line(text: str | BaseException) -> str:
    """An error's text with its line breaks folded: messages for operators are one line."""
    return " ".join(str(text).split())
