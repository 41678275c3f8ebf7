"""The key-value service's protocol: what a client and a server say to each other.

Both ends import this module and nothing of each other (the client knows no
server code, the server no client code), the way wsproto's events are shared
by both ends of a connection. It is pure: frozen classes, limits and checks,
no I/O and no codec. The classes travel as typed wire messages; their tags
(20..28, and 30..59 for the data API below) are given, with Raft's, in
:mod:`kvraft.rpc.wire_types`.

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
``SetOk(version, rev)``    a set applied (new version, the revision it made)
``DeleteOk(deleted, rev)`` a delete or delete_range removed ``deleted`` keys
``RangeResult``            a range's keys (``KeyValue``), revision, ``more``
``TxnResult``              a txn ran a branch: ``succeeded``, ``responses``,
                           ``revision``
``TxnOpFailedResult``      a txn's versioned op did not match: nothing applied
========================  =====================================================

:func:`result_of` turns a result back into a value or the user-facing error.
:class:`NotLeaderResult` is no result of applying: a follower answers it
without submitting anything.

The data API (etcd's model; ``docs/data-model.md``) adds :class:`SetOp`
(unconditional write), :class:`DeleteOp` (versioned delete),
:class:`DeleteRangeOp`, :class:`RangeOp` and :class:`TxnOp` (compares, then
one of two branches of :data:`TxnRequest` operations, as one log entry).
Their results carry the store's *revision*: a counter every write command
that changes something advances by exactly one (a transaction by one in all),
so a write's result names the revision it made and a read's the revision it
read at. Ranges are ``[start, end)`` in code point order, ``end == ""``
meaning "to the last key"; :func:`prefix_end` turns a prefix into its end.

Bounds, all protocol constants (every replica refuses the same commands and
answers reads the same): :data:`MAX_RANGE_REPLY_BYTES` per range reply (at
least one key always), :data:`MAX_TXN_COMPARES` and :data:`MAX_TXN_OPS`,
a txn's keys and values within the value limit (:data:`TXN_ITEM_OVERHEAD_BYTES`
counted per item, so its log entry fits a frame like a put's), and
:data:`MAX_TXN_READ_BYTES` for everything a txn's gets and ranges return,
because a txn's result is kept in its client's session.

Whose fault: :func:`check_op` raises InvalidArgument for a caller's bad input.
The client calls it before sending, the server again on receipt (a client
need not be this one), so a bad operation changes nothing anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvraft.errors import InvalidArgument, NoKey, ProtocolError, VersionMismatch
from kvraft.lease_protocol import (
    LEASE_WRITE_OPS,
    LeaseGrantOk,
    LeaseKeepaliveOk,
    LeaseLimitResult,
    LeaseNotFoundResult,
    LeaseOp,
    LeaseTtlOp,
    LeaseTtlResult,
    lease_id_error,
    lease_op_error,
)

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
# Revisions count writes from 0 (before the first); stored as msgpack ints.
MAX_REVISION = 2**63 - 1
# The most bytes a range answers: key + value of each key, plus this overhead
# per key for its metadata and encoding, so a range of many tiny keys is
# bounded too. A range always returns at least one key if one is in range
# (a key alone fits a frame: the frame keeps 4096 bytes beside the largest
# value); past the budget ``more`` says keys remain. 4 MiB fits the default
# 16 MiB frame with room to spare.
MAX_RANGE_REPLY_BYTES = 4 * 1024 * 1024
RANGE_KEY_OVERHEAD_BYTES = 64
# ``limit`` of a range: 0 for none (the byte budget still applies), else at most this.
MAX_RANGE_LIMIT = 2**31 - 1
# Range bounds are keys, plus room for a pagination start (last key + "\0") and
# a prefix's end (its last code point incremented may take more UTF-8 bytes).
RANGE_BOUND_EXTRA_BYTES = 4
# A transaction's compares, and its operations in each branch.
MAX_TXN_COMPARES = 128
MAX_TXN_OPS = 128
# Each compare and operation of a txn counts its key and value bytes plus this
# toward the value limit, so a txn's log entry fits a frame as a put's does.
TXN_ITEM_OVERHEAD_BYTES = 64
# What a txn's gets and ranges may return in all (counted as for a range).
# A txn's result is kept in its client's session (a resend gets the first
# answer), so it must stay small: 64 results per session at 64 KiB each is
# 4 MiB per session at worst. A read inside a txn that reaches the budget
# stops there with ``more`` set; a plain get or range has no such limit.
MAX_TXN_READ_BYTES = 64 * 1024
# Compare targets and operators.
COMPARE_TARGETS = ("version", "create_revision", "mod_revision", "value", "exists")
COMPARE_OPS = ("==", "!=", "<", ">")


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
    # The lease the key is attached to from now on (0: none; a write detaches
    # the key from any lease it had, as etcd's put does). An unknown lease is
    # LeaseNotFoundResult and nothing changes (kvraft.lease_protocol).
    lease: int = 0


@dataclass(frozen=True, slots=True)
class SetOp:
    """Store ``value`` at ``key`` whatever its version: SetOk (the new version and revision)."""

    key: str
    value: str
    client_id: str
    request_id: int
    acked_below: int
    lease: int = 0  # as PutOp's


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete ``key`` if it is at ``version``: DeleteOk, VersionMismatchResult or NoKeyResult.

    A missing key is NoKeyResult whatever ``version``; ``version`` 0 on an
    existing key is VersionMismatchResult (0 is the version of a missing key).
    """

    key: str
    version: int
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class DeleteRangeOp:
    """Delete every key in ``[start, end)`` (``end`` "" for no end): DeleteOk with the count."""

    start: str
    end: str
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class RangeOp:
    """Read the keys in ``[start, end)`` in order: RangeResult. Through the log like a get.

    ``limit`` 0 is no limit but the byte budget; ``keys_only`` leaves values out ("").
    """

    start: str
    end: str
    limit: int
    keys_only: bool
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn's condition on ``key``: its ``target`` ``op`` ``value``.

    ``target`` is one of :data:`COMPARE_TARGETS`: ``version``,
    ``create_revision`` and ``mod_revision`` compare ints (0 for a missing
    key), ``value`` a str (a missing key fails every value compare),
    ``exists`` a bool (``==``/``!=`` only). ``op`` is one of
    :data:`COMPARE_OPS`. ``Compare("k", "version", "==", 0)`` holds when
    ``k`` does not exist.
    """

    key: str
    target: str
    op: str
    value: int | str | bool


@dataclass(frozen=True, slots=True)
class TxnPut:
    """In a txn: a versioned put; if ``version`` is not the key's, nothing of the txn applies."""

    key: str
    value: str
    version: int
    lease: int = 0  # as PutOp's; an unknown lease fails the whole txn


@dataclass(frozen=True, slots=True)
class TxnSet:
    """In a txn: an unconditional write."""

    key: str
    value: str
    lease: int = 0  # as PutOp's


@dataclass(frozen=True, slots=True)
class TxnDelete:
    """In a txn: delete ``key``; at ``version`` (checked like TxnPut's), or if it exists (None)."""

    key: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class TxnDeleteRange:
    """In a txn: delete every key in ``[start, end)``; :meth:`prefix` for a prefix."""

    start: str
    end: str = ""

    @classmethod
    def prefix(cls, prefix: str) -> TxnDeleteRange:
        return cls(prefix, prefix_end(prefix))


@dataclass(frozen=True, slots=True)
class TxnGet:
    """In a txn: read one key (a RangeResult of zero or one KeyValue)."""

    key: str


@dataclass(frozen=True, slots=True)
class TxnRange:
    """In a txn: read ``[start, end)`` (within :data:`MAX_TXN_READ_BYTES`); :meth:`prefix`."""

    start: str
    end: str = ""
    limit: int = 0
    keys_only: bool = False

    @classmethod
    def prefix(cls, prefix: str, limit: int = 0, keys_only: bool = False) -> TxnRange:
        return cls(prefix, prefix_end(prefix), limit, keys_only)


TxnRequest = TxnPut | TxnSet | TxnDelete | TxnDeleteRange | TxnGet | TxnRange


@dataclass(frozen=True, slots=True)
class TxnOp:
    """If every compare holds, run ``success``, else ``failure``: one log entry, all or nothing."""

    compare: tuple[Compare, ...]
    success: tuple[TxnRequest, ...]
    failure: tuple[TxnRequest, ...]
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class CompactOp:
    """Drop the watch history below ``revision`` on every replica: CompactOk.

    Through the log, so every replica compacts at the same point; it does
    not change the store or its revision. A ``revision`` above the store's
    is clamped to the store's revision + 1 (all history dropped).
    """

    revision: int
    client_id: str
    request_id: int
    acked_below: int


Op = GetOp | PutOp | SetOp | DeleteOp | DeleteRangeOp | RangeOp | TxnOp | CompactOp | LeaseOp
# The commands that may write: their results are kept in the client's session.
WRITE_OPS: tuple[type[Any], ...] = (
    PutOp,
    SetOp,
    DeleteOp,
    DeleteRangeOp,
    TxnOp,
    CompactOp,
    *LEASE_WRITE_OPS,
)
# The commands that only read: applied again when repeated, nothing kept.
READ_OPS: tuple[type[Any], ...] = (GetOp, RangeOp, LeaseTtlOp)
COMMAND_TYPES: tuple[type[Any], ...] = (*READ_OPS, *WRITE_OPS)


# ----------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class GetOk:
    """The key's value and version at the get's place in the log."""

    value: str
    version: int


@dataclass(frozen=True, slots=True)
class PutOk:
    """The put applied; ``version`` is the key's new version (the put's version + 1).

    ``revision`` is the store revision the put made (0 only in results built
    by hand: the field was added with revisions).
    """

    version: int
    revision: int = 0


@dataclass(frozen=True, slots=True)
class SetOk:
    """The set applied: the key's new ``version`` and the ``revision`` it made."""

    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class DeleteOk:
    """``deleted`` keys removed; ``revision`` is the one that made (unchanged if none)."""

    deleted: int
    revision: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key of a range, with its metadata (``value`` is "" for ``keys_only``).

    ``lease`` is the id of the lease the key is attached to, 0 for none.
    """

    key: str
    value: str
    version: int
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range's keys in order, the ``revision`` it read at, and whether ``more`` remain.

    To read on past a reply with ``more``, range again from the last key + "\\0".
    """

    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch ran (``succeeded``: the compares held), each of its ops' results, the revision.

    ``responses[i]`` is PutOk, SetOk, DeleteOk or RangeResult (a get's is a
    range of zero or one key); ``revision`` is the store's after the txn
    (advanced by one if the branch changed anything), and every read in it
    reports the same.
    """

    succeeded: bool
    responses: tuple[PutOk | SetOk | DeleteOk | RangeResult, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class TxnOpFailedResult:
    """Nothing of the txn applied: op ``index`` of the branch that ran had a wrong version.

    ``current_version`` is the key's (0: it does not exist, a NoKey).
    """

    succeeded: bool
    index: int
    current_version: int


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


@dataclass(frozen=True, slots=True)
class CompactOk:
    """The history now starts at ``first_revision``: a watch from below it is Compacted."""

    first_revision: int


# ------------------------------------------------------------------------ watch


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``type`` "put" or "delete" of ``kv.key`` at ``revision``.

    ``kv`` is the key-value after the change (for a delete: the key, value
    "", version 0, ``mod_revision`` the delete's revision); ``prev_kv`` the
    one before it, if the watch asked for it and the key existed, else None.
    """

    type: str
    kv: KeyValue
    prev_kv: KeyValue | None
    revision: int


@dataclass(frozen=True, slots=True)
class WatchPoll:
    """The ``watch.poll`` RPC's argument: events of ``[start, end)`` from a cursor.

    The cursor is ``(next_revision, skip)``: every matching event of
    revisions >= ``next_revision``, leaving out the first ``skip`` of
    ``next_revision`` (already delivered: one revision may span replies).
    ``next_revision`` 0 is "from now": from this replica's revision + 1.
    The server answers at once if it has events, else after ``wait_s``
    (at most :data:`MAX_WATCH_WAIT_S`) or as soon as an event arrives.
    At most ``max_events`` (1..:data:`MAX_WATCH_EVENTS`) events and
    :data:`MAX_WATCH_REPLY_BYTES` per reply (always one event at least).
    """

    start: str
    end: str
    next_revision: int
    skip: int
    max_events: int
    prev_kv: bool
    wait_s: float


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """A poll's events, in revision order, and the cursor to poll from next.

    ``revision`` is the replica's applied revision when it answered: a
    watcher knows it has seen everything up to it (if the cursor passed it).
    """

    events: tuple[WatchEvent, ...]
    next_revision: int
    skip: int
    revision: int


@dataclass(frozen=True, slots=True)
class WatchCompactedResult:
    """The poll's cursor is below this replica's history; it starts at ``first_revision``."""

    first_revision: int


# The most events and bytes (key, value and prev value of each, plus
# WATCH_EVENT_OVERHEAD_BYTES) a watch.poll answers; one event always, and one
# event fits a frame (two values of at most max_value_bytes each and a key:
# the default 16 MiB frame holds two 1 MiB values with room to spare).
MAX_WATCH_EVENTS = 10_000
MAX_WATCH_REPLY_BYTES = 4 * 1024 * 1024
WATCH_EVENT_OVERHEAD_BYTES = 96
# The longest a poll waits for an event before answering an empty batch.
MAX_WATCH_WAIT_S = 30.0


def check_watch_poll(poll: WatchPoll, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> None:
    """Raise InvalidArgument unless ``poll`` is within the protocol's bounds."""
    _check_bounds(poll.start, poll.end, max_key_bytes + RANGE_BOUND_EXTRA_BYTES)
    for name, number in (("next_revision", poll.next_revision), ("skip", poll.skip)):
        if type(number) is not int or not 0 <= number <= MAX_REVISION:
            raise InvalidArgument(f"{name} must be an int in 0..{MAX_REVISION}, not {number!r}")
    if type(poll.max_events) is not int or not 1 <= poll.max_events <= MAX_WATCH_EVENTS:
        raise InvalidArgument(
            f"max_events must be an int in 1..{MAX_WATCH_EVENTS}, not {poll.max_events!r}"
        )
    if type(poll.prev_kv) is not bool:
        raise InvalidArgument(f"prev_kv must be bool, not {poll.prev_kv!r}")
    wait = poll.wait_s
    if type(wait) not in (int, float) or not 0 <= wait <= MAX_WATCH_WAIT_S:
        raise InvalidArgument(f"wait_s must be in 0..{MAX_WATCH_WAIT_S:g}, not {wait!r}")


def watch_event_bytes(event: WatchEvent) -> int:
    """What ``event`` counts toward a reply's and the history's byte bounds."""
    size = WATCH_EVENT_OVERHEAD_BYTES + utf8_len(event.kv.key) + utf8_len(event.kv.value)
    if event.prev_kv is not None:
        size += utf8_len(event.prev_kv.value)
    return size


Result = (
    GetOk
    | PutOk
    | SetOk
    | DeleteOk
    | RangeResult
    | TxnResult
    | TxnOpFailedResult
    | NoKeyResult
    | VersionMismatchResult
    | StaleRequestResult
    | SessionExpiredResult
    | CompactOk
    | LeaseGrantOk
    | LeaseKeepaliveOk
    | LeaseTtlResult
    | LeaseNotFoundResult
    | LeaseLimitResult
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
    Ranges: bounds of at most ``max_key_bytes + RANGE_BOUND_EXTRA_BYTES``,
    ``start <= end`` unless ``end`` is "", ``limit`` in ``0..MAX_RANGE_LIMIT``.
    Transactions: :func:`txn_error`'s rules, and all keys and values within
    ``max_value_bytes`` with ``TXN_ITEM_OVERHEAD_BYTES`` per item.
    """
    kind = type(op)
    if kind not in COMMAND_TYPES:
        raise InvalidArgument(f"not a command: {kind.__name__}")
    bound_bytes = max_key_bytes + RANGE_BOUND_EXTRA_BYTES
    if kind is TxnOp:
        assert isinstance(op, TxnOp)
        why = txn_error(op)
        if why is not None:
            raise InvalidArgument(why)
        _check_txn_sizes(op, max_value_bytes, max_key_bytes)
    elif kind is CompactOp:
        assert isinstance(op, CompactOp)
        if type(op.revision) is not int or not 0 <= op.revision <= MAX_REVISION:
            raise InvalidArgument(
                f"revision must be an int in 0..{MAX_REVISION}, not {op.revision!r}"
            )
    elif isinstance(op, LeaseOp):
        why = lease_op_error(op)
        if why is not None:
            raise InvalidArgument(why)
    elif kind is RangeOp or kind is DeleteRangeOp:
        assert isinstance(op, RangeOp | DeleteRangeOp)
        _check_bounds(op.start, op.end, bound_bytes)
        if isinstance(op, RangeOp):
            _check_limit(op.limit)
            if type(op.keys_only) is not bool:
                raise InvalidArgument(f"keys_only must be bool, not {op.keys_only!r}")
    else:
        assert isinstance(op, GetOp | PutOp | SetOp | DeleteOp)
        _check_str("key", op.key, max_key_bytes)
        if isinstance(op, PutOp | SetOp):
            _check_str("value", op.value, max_value_bytes)
        if isinstance(op, PutOp | DeleteOp):
            check_version(op.version)
        if isinstance(op, PutOp | SetOp):
            why = lease_id_error(op.lease, allow_none=True)
            if why is not None:
                raise InvalidArgument(why)
    check_client_id(op.client_id)
    if type(op.request_id) is not int or not 0 <= op.request_id <= MAX_REQUEST_ID:
        raise InvalidArgument(
            f"request_id must be an int in 0..{MAX_REQUEST_ID}, not {op.request_id!r}"
        )
    why = acked_below_error(op.request_id, op.acked_below)
    if why is not None:
        raise InvalidArgument(why)


def prefix_end(prefix: str) -> str:
    """The end of the range of keys that start with ``prefix``: ``[prefix, prefix_end)``.

    Keys compare by code point, so the end is the prefix with its last code
    point incremented; a last code point that cannot be incremented
    (U+10FFFF) is dropped and the one before incremented instead. The
    surrogates (U+D800..U+DFFF) are skipped: keys cannot hold them, and
    U+E000 sorts after every key that starts with the prefix up to U+D7FF.
    "" (no end: every key) for the empty prefix or one of only U+10FFFF.
    The one helper for every prefix, client and server alike.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:
                following = 0xE000
            return "".join(chars) + chr(following)
    return ""


def in_range(key: str, start: str, end: str) -> bool:
    """Whether ``key`` is in ``[start, end)`` (``end`` "" for no end)."""
    return start <= key and (end == "" or key < end)


def txn_error(op: TxnOp) -> str | None:
    """Why ``op`` is not a well-formed transaction, or None: the rules every replica applies.

    Shared by ``check_op`` and the server's command decoder, like
    :func:`acked_below_error`: types and values of every compare and
    operation, at most MAX_TXN_COMPARES compares and MAX_TXN_OPS operations
    per branch, and no key written twice in one branch (a put, set or delete
    of a key another write of the branch also writes, or that lies in one of
    its delete ranges; two delete ranges that overlap). That last rule is
    what lets the server check every versioned operation against the store
    as it was before the txn, all or nothing. Sizes are ``check_op``'s.
    """
    if type(op.compare) is not tuple or type(op.success) is not tuple:
        return "compare, success and failure must be tuples"
    if type(op.failure) is not tuple:
        return "compare, success and failure must be tuples"
    if len(op.compare) > MAX_TXN_COMPARES:
        return f"{len(op.compare)} compares: at most {MAX_TXN_COMPARES}"
    for i, cmp in enumerate(op.compare):
        why = _compare_error(cmp)
        if why is not None:
            return f"compare[{i}]: {why}"
    for name, branch in (("success", op.success), ("failure", op.failure)):
        if len(branch) > MAX_TXN_OPS:
            return f"{len(branch)} {name} operations: at most {MAX_TXN_OPS}"
        why = _branch_error(branch)
        if why is not None:
            return f"{name}{why}"
    return None


def _compare_error(cmp: object) -> str | None:
    if type(cmp) is not Compare:
        return f"not a Compare: {type(cmp).__name__}"
    if type(cmp.key) is not str:
        return f"key must be str, not {type(cmp.key).__name__}"
    if cmp.target not in COMPARE_TARGETS or type(cmp.target) is not str:
        return f"target must be one of {', '.join(COMPARE_TARGETS)}, not {cmp.target!r}"
    if cmp.op not in COMPARE_OPS or type(cmp.op) is not str:
        return f"op must be one of {' '.join(COMPARE_OPS)}, not {cmp.op!r}"
    value = cmp.value
    if cmp.target == "value":
        if type(value) is not str:
            return f"a value compare takes a str, not {type(value).__name__}"
    elif cmp.target == "exists":
        if type(value) is not bool:
            return f"an exists compare takes a bool, not {type(value).__name__}"
        if cmp.op not in ("==", "!="):
            return f"an exists compare takes == or !=, not {cmp.op}"
    elif type(value) is not int or not 0 <= value <= MAX_REVISION:
        return f"a {cmp.target} compare takes an int in 0..{MAX_REVISION}, not {value!r}"
    return None


def _branch_error(branch: tuple[object, ...]) -> str | None:
    written: set[str] = set()
    ranges: list[tuple[str, str]] = []
    for i, item in enumerate(branch):
        kind = type(item)
        if kind is TxnPut or kind is TxnSet or kind is TxnDelete or kind is TxnGet:
            assert isinstance(item, TxnPut | TxnSet | TxnDelete | TxnGet)
            if type(item.key) is not str:
                return f"[{i}]: key must be str, not {type(item.key).__name__}"
            if isinstance(item, TxnPut | TxnSet) and type(item.value) is not str:
                return f"[{i}]: value must be str, not {type(item.value).__name__}"
            if isinstance(item, TxnPut | TxnSet):
                why = lease_id_error(item.lease, allow_none=True)
                if why is not None:
                    return f"[{i}]: {why}"
            unversioned = isinstance(item, TxnDelete) and item.version is None
            if isinstance(item, TxnPut | TxnDelete) and not unversioned:
                version = item.version
                if type(version) is not int or not 0 <= version <= MAX_VERSION:
                    return f"[{i}]: version must be an int in 0..{MAX_VERSION}, not {version!r}"
            if kind is not TxnGet:
                if item.key in written or any(in_range(item.key, s, e) for s, e in ranges):
                    return f"[{i}]: {item.key!r} is written twice in one branch"
                written.add(item.key)
        elif kind is TxnRange or kind is TxnDeleteRange:
            assert isinstance(item, TxnRange | TxnDeleteRange)
            if type(item.start) is not str or type(item.end) is not str:
                return f"[{i}]: start and end must be str"
            if item.end != "" and item.end < item.start:
                return f"[{i}]: end {item.end!r} is before start {item.start!r}"
            if isinstance(item, TxnRange):
                if type(item.limit) is not int or not 0 <= item.limit <= MAX_RANGE_LIMIT:
                    return f"[{i}]: limit must be an int in 0..{MAX_RANGE_LIMIT}"
                if type(item.keys_only) is not bool:
                    return f"[{i}]: keys_only must be bool"
            else:
                overlaps = any(
                    (item.end == "" or s < item.end) and (e == "" or item.start < e)
                    for s, e in ranges
                )
                if overlaps or any(in_range(k, item.start, item.end) for k in written):
                    return f"[{i}]: the delete range overlaps another write of the branch"
                ranges.append((item.start, item.end))
        else:
            return f"[{i}]: not a txn operation: {kind.__name__}"
    return None


def _check_txn_sizes(op: TxnOp, max_value_bytes: int, max_key_bytes: int) -> None:
    """Every key within its limit, the whole txn within ``max_value_bytes`` (module docstring)."""
    total = 0
    bound_bytes = max_key_bytes + RANGE_BOUND_EXTRA_BYTES
    for item in (*op.compare, *op.success, *op.failure):
        total += TXN_ITEM_OVERHEAD_BYTES
        if isinstance(item, TxnRange | TxnDeleteRange):
            _check_bounds(item.start, item.end, bound_bytes)
            total += utf8_len(item.start) + utf8_len(item.end)
            continue
        assert isinstance(item, Compare | TxnPut | TxnSet | TxnDelete | TxnGet)
        _check_str("key", item.key, max_key_bytes)
        total += utf8_len(item.key)
        value = getattr(item, "value", None)
        if type(value) is str:
            _check_str("value", value, max_value_bytes)
            total += utf8_len(value)
    if total > max_value_bytes:
        raise InvalidArgument(
            f"transaction of {total} bytes (keys, values and {TXN_ITEM_OVERHEAD_BYTES} per"
            f" item) exceeds the maximum of {max_value_bytes}"
        )


def _check_bounds(start: object, end: object, max_bytes: int) -> None:
    _check_str("start", start, max_bytes)
    _check_str("end", end, max_bytes)
    assert isinstance(start, str) and isinstance(end, str)
    if end != "" and end < start:
        raise InvalidArgument(f"range end {end!r} is before its start {start!r}")


def _check_limit(limit: object) -> None:
    if type(limit) is not int or not 0 <= limit <= MAX_RANGE_LIMIT:
        raise InvalidArgument(f"limit must be an int in 0..{MAX_RANGE_LIMIT}, not {limit!r}")


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
