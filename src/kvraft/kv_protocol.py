"""The key-value service's protocol: what a client and a server say to each other.

Both ends import this module and nothing of each other (the client knows no
server code, the server no client code), the way wsproto's events are shared
by both ends of a connection. It is pure: frozen classes, limits and checks,
no I/O and no codec. The classes travel as typed wire messages; their tags
(20..28) are given, with Raft's, in :mod:`kvraft.rpc.wire_types`.

A command is a :class:`GetOp` or a :class:`PutOp` (the union :data:`Op`): the
argument of the ``get``/``put`` RPC and, encoded by the server
(``kvraft.server.commands``), the bytes of a log entry. Each carries
``client_id``, ``request_id`` and ``acked_below``. They do not change what the
command does; they name it, for two reasons. The server's RSM recognises its
own entry: when the entry committed at the index it waits on has another
``(client_id, request_id)``, a different command won that index and the RPC
answers WrongLeader. And they make a *client session* (Raft thesis §6.3,
``kvraft.server.sessions``): a client numbers its requests 1, 2, 3, ... and
says in each that it has the answers of all its requests below
``acked_below``; the state machine applies a ``(client_id, request_id)`` at
most once, answers a copy with the first application's result, and refuses
copies older than ``acked_below``. A client has at most
:data:`MAX_IN_FLIGHT_PER_CLIENT` request ids open at once
(``request_id - acked_below`` below it), which bounds what a session stores.

Applying a command yields a :data:`Result`, one small frozen class per outcome,
so callers dispatch with ``match``:

========================  =====================================================
``GetOk(value, version)``  a get found the key
``PutOk(version)``         a put applied; ``version`` is the key's new version
``NoKeyResult()``          a get of a missing key, or a put at version > 0 on one
``VersionMismatchResult``  a put's version was not ``current_version``; nothing
                           changed
``StaleRequestResult()``   a copy of a request the client had already
                           acknowledged the answer of; not applied
``SessionExpiredResult()`` the client's session was forgotten (expired or
                           evicted); not applied, and the outcome of the
                           client's earlier attempts is unknown
========================  =====================================================

:func:`result_of` turns a result back into a value or the user-facing error.
:class:`NotLeaderResult` is no result of applying: a follower answers it
without submitting anything.

Whose fault: :func:`check_op` raises InvalidArgument for a caller's bad input.
The client calls it before sending, the server again on receipt (a client
need not be this one), so a bad operation changes nothing anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvraft.errors import InvalidArgument, NoKey, ProtocolError, VersionMismatch

# Key bytes are small so a key plus the frame envelope fit in the 4096 bytes
# ServerOptions reserves beside the largest value in a frame.
DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
# Versions must fit msgpack's signed 64-bit range, and so must version + 1.
MAX_VERSION = 2**63 - 2
# A client id is carried by every command, so in every log entry, snapshot
# session and AppendEntries: unbounded, one request just under the frame limit
# became a Raft message just over it. 64 UTF-8 bytes hold any UUID or host-pid
# name with room to spare, and keep the per-entry overhead small and known.
MAX_CLIENT_ID_BYTES = 64
# Request ids are compared and stored as SQLite/msgpack signed 64-bit integers.
MAX_REQUEST_ID = 2**63 - 1
# A client's request ids open at once (request_id - acked_below < this): the most
# results a server keeps per client session. A protocol constant, not a setting:
# every replica must refuse the same commands.
MAX_IN_FLIGHT_PER_CLIENT = 64
# A client numbers a session's requests from 1; acked_below <= 1 says it has no
# answer yet in this session (the only commands that may open a session).
FIRST_REQUEST_ID = 1


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class GetOp:
    """Read ``key``: answers GetOk or NoKeyResult. Goes through the log like a put."""

    key: str
    client_id: str
    request_id: int
    # The client has the answers of all its requests with lower ids (module docstring).
    acked_below: int


@dataclass(frozen=True, slots=True)
class PutOp:
    """Store ``value`` if ``key`` is at ``version``: PutOk, VersionMismatchResult or NoKeyResult."""

    key: str
    value: str
    version: int
    client_id: str
    request_id: int
    acked_below: int


Op = GetOp | PutOp


# ----------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class GetOk:
    """The key's value and version at the get's place in the log."""

    value: str
    version: int


@dataclass(frozen=True, slots=True)
class PutOk:
    """The put applied; ``version`` is the key's new version (the put's version + 1)."""

    version: int


@dataclass(frozen=True, slots=True)
class NoKeyResult:
    """The key does not exist (a get, or a put at version > 0)."""


@dataclass(frozen=True, slots=True)
class VersionMismatchResult:
    """The put's version was not the key's; the key is at ``current_version``, unchanged."""

    current_version: int


@dataclass(frozen=True, slots=True)
class StaleRequestResult:
    """Not applied: the request is older than what its client has acknowledged.

    Only a copy delayed in transit, or resent by a client that had already
    moved on, meets this; the client that sent it is no longer waiting.
    """


@dataclass(frozen=True, slots=True)
class SessionExpiredResult:
    """Not applied: the server no longer knows the client's session.

    The session expired or was evicted (``kvraft.server.sessions``), so the
    server cannot tell whether an earlier attempt of this request applied: the
    client starts a new session, and a put that may have applied before
    becomes ``Maybe`` if its retry meets VersionMismatch.
    """


Result = (
    GetOk | PutOk | NoKeyResult | VersionMismatchResult | StaleRequestResult | SessionExpiredResult
)


@dataclass(frozen=True, slots=True)
class NotLeaderResult:
    """Not a result of applying: the server is not the leader and submitted nothing.

    ``leader_address`` is the address (from ``--peers``) of the server it
    believes leads, if it knows one, so the client can go straight there.
    """

    leader_address: str | None


def result_of(result: Any) -> tuple[str | None, int]:
    """A result as the client's return value; raises the user-facing error it stands for.

    GetOk gives ``(value, version)``, PutOk ``(None, new_version)``;
    NoKeyResult raises NoKey and VersionMismatchResult VersionMismatch.
    Anything else is the server's fault and raises ProtocolError.
    """
    match result:
        case GetOk(value=value, version=version):
            return value, version
        case PutOk(version=version):
            return None, version
        case NoKeyResult():
            raise NoKey("no such key")
        case VersionMismatchResult(current_version=current):
            raise VersionMismatch(f"the key is at version {current}")
        case StaleRequestResult() | SessionExpiredResult():
            # The client renews its session on these before it gets here.
            raise ProtocolError(f"session answer not handled: {type(result).__name__}")
        case _:
            raise ProtocolError(f"not an operation result: {type(result).__name__}")


# ------------------------------------------------------------------- validation


def check_op(
    op: object,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
) -> None:
    """Raise InvalidArgument unless ``op`` is a command a user may submit.

    The dataclasses do not check types at construction, so this is where a
    caller's mistake is caught, locally and before anything is sent: a key
    or value that is not exactly ``str`` or is not encodable as UTF-8 (a lone
    surrogate), a key or value longer than its limit in UTF-8 bytes, a
    version that is not exactly ``int`` (``True`` is refused) or is outside
    ``0..MAX_VERSION``, a ``client_id`` that is not ``str`` or is longer
    than ``MAX_CLIENT_ID_BYTES`` UTF-8 bytes, a ``request_id`` that is not
    exactly ``int`` or is outside ``0..MAX_REQUEST_ID``, and an ``acked_below``
    outside ``request_id - MAX_IN_FLIGHT_PER_CLIENT < acked_below <= request_id``.
    """
    if type(op) is not GetOp and type(op) is not PutOp:
        raise InvalidArgument(f"not a command: {type(op).__name__}")
    _check_str("key", op.key, max_key_bytes)
    if type(op) is PutOp:
        _check_str("value", op.value, max_value_bytes)
        check_version(op.version)
    check_client_id(op.client_id)
    if type(op.request_id) is not int or not 0 <= op.request_id <= MAX_REQUEST_ID:
        raise InvalidArgument(
            f"request_id must be an int in 0..{MAX_REQUEST_ID}, not {op.request_id!r}"
        )
    why = acked_below_error(op.request_id, op.acked_below)
    if why is not None:
        raise InvalidArgument(why)


def acked_below_error(request_id: int, acked_below: object) -> str | None:
    """Why ``acked_below`` is impossible for ``request_id``, or None if it is fine.

    A client cannot have acknowledged the request it is sending, and has at
    most MAX_IN_FLIGHT_PER_CLIENT ids open. Shared by ``check_op`` (a user's
    mistake) and the server's command decoder (the same rule on every replica).
    """
    if type(acked_below) is not int or acked_below < 0:
        return f"acked_below must be an int >= 0, not {acked_below!r}"
    if acked_below > request_id:
        return f"acked_below {acked_below} is above request_id {request_id}"
    if request_id - acked_below >= MAX_IN_FLIGHT_PER_CLIENT:
        return (
            f"request_id {request_id} is {request_id - acked_below} past acked_below "
            f"{acked_below}: at most {MAX_IN_FLIGHT_PER_CLIENT} requests in flight per client"
        )
    return None


def check_client_id(client_id: object, max_bytes: int = MAX_CLIENT_ID_BYTES) -> None:
    """Raise InvalidArgument unless ``client_id`` is a ``str`` of at most ``max_bytes``.

    The bound is in UTF-8 bytes, as it travels; see MAX_CLIENT_ID_BYTES for why.
    """
    _check_str("client_id", client_id, max_bytes)


def check_version(version: object) -> None:
    """Raise InvalidArgument unless ``version`` is an ``int`` (not bool) in ``0..MAX_VERSION``."""
    if type(version) is not int:
        raise InvalidArgument(f"version must be int, not {type(version).__name__}")
    if not 0 <= version <= MAX_VERSION:
        raise InvalidArgument(f"version must be in 0..{MAX_VERSION}, not {version}")


def _check_str(what: str, text: object, max_bytes: int) -> None:
    if type(text) is not str:
        raise InvalidArgument(f"{what} must be str, not {type(text).__name__}")
    try:
        size = utf8_len(text)
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not encodable as UTF-8 (lone surrogate?)") from None
    if size > max_bytes:
        raise InvalidArgument(f"{what} of {size} bytes exceeds the maximum of {max_bytes}")


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes, without encoding it when it is ASCII.

    The limits above are in UTF-8 bytes, and the server's store counts its
    size the same way. ``str.isascii`` is O(1) in CPython (a flag on the
    string object), so the common case costs nothing; other strings are
    encoded once.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8"))
