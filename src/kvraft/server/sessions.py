"""Client sessions (Raft thesis §6.3): each request applied at most once, its first result kept.

Without sessions every resend of a command appends another copy of it to the
log and applies it again: a put whose reply was lost answers its own resend
with VersionMismatch (so the client had to raise ``Maybe``), and a copy
delayed in transit can apply after its client was already told the outcome.
So the state machine remembers, per ``client_id``, what it applied:

- **What is stored.** Per session: ``acked_below`` (the highest the client
  declared: it has the answers of all its requests below it), ``last_index``
  (the log index of the last command of the client applied), and the result
  of every write (put, set, delete, delete_range, txn) with ``request_id >=
  acked_below`` it applied. A write whose
  ``(client_id, request_id)`` already applied is not applied again: it gets the
  first application's result. A command with ``request_id < acked_below`` is
  refused (StaleRequestResult), never applied.
- **Reads** (gets, ranges, lease_ttl) store no result: they change nothing, so a
  repeated read is simply executed again, at its own place in the log (still inside the caller's
  call..return interval, so still linearizable). They take part in the
  session otherwise (they raise ``acked_below``, touch the session and are
  refused when stale), so a client's order is one order for all its requests.
- **Bounds.** At most ``MAX_IN_FLIGHT_PER_CLIENT`` results per session: the
  command decoder refuses ``request_id - acked_below`` at or over it, and
  results below ``acked_below`` are dropped, so every stored id lies in
  ``[acked_below, acked_below + MAX_IN_FLIGHT_PER_CLIENT)``. Each result is
  small: a txn's, the largest, holds at most MAX_TXN_OPS responses whose
  reads share ``MAX_TXN_READ_BYTES`` (``kvraft.kv_protocol``). At most
  ``SessionLimits.max_sessions`` sessions: opening one more evicts the least
  recently used.
- **Expiry by log time.** A session untouched for ``expiry_entries`` applied
  log entries is forgotten. Both rules depend on the log alone (indexes, and
  the order in which commands touched sessions), never on a clock, so every
  replica forgets the same sessions at the same index.
- **A forgotten session.** A command from an unknown client opens a session
  only if it says the client has no answer yet (``acked_below <=
  FIRST_REQUEST_ID``); otherwise the session existed and was forgotten, and
  with it whether the request already applied, so a write is refused with
  SessionExpiredResult (the client starts a new session; its outcome may now
  be ``Maybe``) and a read is answered without opening a session.

Sessions are part of the replicated state: they go into snapshots
(:mod:`kvraft.server.state_snapshot`), in their use order, so a restored
replica evicts and expires exactly as one that applied the log. Determinism
is a safety property here: OrderedDict order is the order of touches in the
log, and nothing iterates a set.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kvraft.errors import ProtocolError
from kvraft.kv_protocol import (
    FIRST_REQUEST_ID,
    MAX_IN_FLIGHT_PER_CLIENT,
    READ_OPS,
    CompactOk,
    DeleteOk,
    NoKeyResult,
    Op,
    PutOk,
    RangeResult,
    Result,
    SessionExpiredResult,
    SetOk,
    StaleRequestResult,
    TxnOpFailedResult,
    TxnResult,
    VersionMismatchResult,
)
from kvraft.lease_protocol import (
    LeaseGrantOk,
    LeaseKeepaliveOk,
    LeaseLimitResult,
    LeaseNotFoundResult,
)
from kvraft.rpc.codec import pack, unpack
from kvraft.server.commands import apply_command
from kvraft.server.kvstore import BadSnapshot, KVStore

# The results a write can have: the only ones a session keeps and a snapshot holds.
_STORED_RESULTS: tuple[type[Any], ...] = (
    PutOk,
    SetOk,
    DeleteOk,
    TxnResult,
    TxnOpFailedResult,
    CompactOk,
    NoKeyResult,
    VersionMismatchResult,
    LeaseGrantOk,
    LeaseKeepaliveOk,
    LeaseNotFoundResult,
    LeaseLimitResult,
)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How many sessions a state machine keeps, and for how long (in applied log entries).

    Part of the state machine's definition: every replica of a cluster must
    use the same values, or they forget different sessions and diverge. So
    they are not server flags; tests pass small ones to every replica alike.
    """

    # 10,000 sessions of at most 64 small results each: tens of MB at worst.
    max_sessions: int = 10_000
    expiry_entries: int = 1_000_000

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.expiry_entries < 1:
            raise ValueError(f"session limits must be >= 1: {self}")


class _Session:
    __slots__ = ("acked_below", "last_index", "results")

    def __init__(self, acked_below: int, last_index: int, results: dict[int, Result]) -> None:
        # Invariant: every key of results is >= acked_below, and there are at most
        # MAX_IN_FLIGHT_PER_CLIENT of them.
        self.acked_below = acked_below
        self.last_index = last_index
        self.results = results


class Sessions:
    """Every client session of one state machine; see the module docstring."""

    __slots__ = ("_sessions", "limits")

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        # client_id -> session, least recently touched first.
        # Invariant: last_index is non-decreasing along this order.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sessions):
            return NotImplemented
        return self.limits == other.limits and list(self._items()) == list(other._items())

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def _items(self) -> Any:
        for client_id, s in self._sessions.items():
            yield client_id, s.acked_below, s.last_index, sorted(s.results.items())

    def acked_below(self, client_id: str) -> int | None:
        """The session's ``acked_below``, or None if there is no such session."""
        session = self._sessions.get(client_id)
        return None if session is None else session.acked_below

    def results_held(self) -> int:
        """Results stored across all sessions (O(sessions); for tests and status)."""
        return sum(len(s.results) for s in self._sessions.values())

    # ------------------------------------------------------------------ applying

    def advance(self, index: int) -> None:
        """Log time moved to ``index``: forget sessions untouched for ``expiry_entries``."""
        sessions, horizon = self._sessions, index - self.limits.expiry_entries
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.last_index > horizon:
                return
            sessions.popitem(last=False)

    def apply(self, store: KVStore, op: Op, index: int) -> Result:
        """Apply committed command ``op`` at log ``index`` to ``store``, at most once.

        The caller calls :meth:`advance` with ``index`` first. Deterministic:
        the same sessions, store, command and index give the same result and
        state on every replica.
        """
        request_id = op.request_id
        session = self._sessions.get(op.client_id)
        if session is None:
            if op.acked_below > FIRST_REQUEST_ID:
                # Forgotten: whether this request applied before is unknown.
                if type(op) in READ_OPS:
                    return apply_command(store, op)
                return SessionExpiredResult()
            session = self._open(op.client_id, op.acked_below, index)
        else:
            self._sessions.move_to_end(op.client_id)
            session.last_index = index
        if op.acked_below > session.acked_below:
            session.acked_below = op.acked_below
            results = session.results
            for old in [r for r in results if r < op.acked_below]:
                del results[old]
        if request_id < session.acked_below:
            return StaleRequestResult()
        if type(op) in READ_OPS:
            return apply_command(store, op)
        cached = session.results.get(request_id)
        if cached is not None:
            return cached
        result = apply_command(store, op)
        # Bounded by the decoder's window check (module docstring).
        assert len(session.results) < MAX_IN_FLIGHT_PER_CLIENT, (op, len(session.results))
        session.results[request_id] = result
        return result

    def _open(self, client_id: str, acked_below: int, index: int) -> _Session:
        sessions = self._sessions
        if len(sessions) >= self.limits.max_sessions:
            sessions.popitem(last=False)  # the least recently used
        session = _Session(acked_below, index, {})
        sessions[client_id] = session
        return session

    # ----------------------------------------------------------------- snapshots

    def copy(self) -> Sessions:
        """An independent copy, for encoding in another thread while applying goes on.

        O(sessions + results): the sessions are small and bounded in number.
        """
        clone = Sessions(self.limits)
        clone._sessions = OrderedDict(
            (cid, _Session(s.acked_below, s.last_index, dict(s.results)))
            for cid, s in self._sessions.items()
        )
        return clone

    def pack_into(self, packer: Any) -> None:
        """Append the sessions to a msgpack ``packer`` as one array, canonically.

        Layout: a flat array of 4 items per session, in use order (least
        recently used first): ``client_id, acked_below, last_index, results``,
        where ``results`` is a flat array of ``request_id, result`` pairs in
        ascending request id, each result the bytes of its wire encoding
        (``kvraft.rpc.codec``: deterministic, and checked field by field when
        read back).
        """
        packer.pack_array_header(4 * len(self._sessions))
        for client_id, session in self._sessions.items():
            packer.pack(client_id)
            packer.pack(session.acked_below)
            packer.pack(session.last_index)
            results = sorted(session.results.items())
            packer.pack_array_header(2 * len(results))
            for request_id, result in results:
                packer.pack(request_id)
                packer.pack(pack(result))

    @classmethod
    def read(cls, unpacker: Any, limits: SessionLimits | None = None) -> Sessions:
        """The sessions :meth:`pack_into` wrote; BadSnapshot for anything else.

        Strict, like the store's reader: types, counts within the limits,
        unique client ids, use order consistent with ``last_index``, results
        in ascending request id at or above ``acked_below``.
        """
        sessions = cls(limits)
        count = _array_header(unpacker, "session array")
        if count % 4:
            raise BadSnapshot(f"session array of length {count} is not 4-item sessions")
        if count // 4 > sessions.limits.max_sessions:
            raise BadSnapshot(f"{count // 4} sessions, over {sessions.limits.max_sessions}")
        previous_index = 0
        table = sessions._sessions
        for _ in range(count // 4):
            client_id = unpacker.unpack()
            acked_below = unpacker.unpack()
            last_index = unpacker.unpack()
            if type(client_id) is not str or type(acked_below) is not int:
                raise BadSnapshot(f"bad session ({client_id!r}, {acked_below!r})")
            if type(last_index) is not int or not previous_index <= last_index:
                raise BadSnapshot(f"session {client_id!r}: last index {last_index!r} out of order")
            if acked_below < 0 or client_id in table:
                raise BadSnapshot(f"session {client_id!r} repeated or with bad acked_below")
            previous_index = last_index
            table[client_id] = _Session(
                acked_below, last_index, _read_results(unpacker, acked_below)
            )
        return sessions


def _read_results(unpacker: Any, acked_below: int) -> dict[int, Result]:
    count = _array_header(unpacker, "result array")
    if count % 2 or count // 2 > MAX_IN_FLIGHT_PER_CLIENT:
        raise BadSnapshot(f"result array of length {count}")
    results: dict[int, Result] = {}
    previous = acked_below - 1
    for _ in range(count // 2):
        request_id, data = unpacker.unpack(), unpacker.unpack()
        if type(request_id) is not int or type(data) is not bytes:
            raise BadSnapshot(f"bad result ({request_id!r}, {type(data).__name__})")
        if request_id <= previous:
            raise BadSnapshot(f"result ids out of order or below acked_below: {request_id}")
        previous = request_id
        try:
            result = unpack(data)
        except ProtocolError as exc:
            raise BadSnapshot(f"result {request_id}: {exc}") from None
        why = _stored_result_error(result)
        if why is not None:
            raise BadSnapshot(f"result {request_id}: {why}")
        if pack(result) != data:
            raise BadSnapshot(f"result {request_id} is not canonically encoded")
        results[request_id] = result
    return results


def _stored_result_error(result: object) -> str | None:
    """Why ``result`` cannot be a write's result, or None (types are the codec's)."""
    if type(result) not in _STORED_RESULTS:
        return f"not a write's result: {type(result).__name__}"
    if isinstance(result, PutOk | SetOk) and not (result.version >= 1 and result.revision >= 0):
        return f"impossible {result!r}"
    if isinstance(result, DeleteOk) and not (result.deleted >= 0 and result.revision >= 0):
        return f"impossible {result!r}"
    if isinstance(result, VersionMismatchResult) and result.current_version < 1:
        return f"impossible {result!r}"
    if isinstance(result, TxnResult):
        for response in result.responses:
            if not isinstance(response, RangeResult):
                why = _stored_result_error(response)
                if why is not None:
                    return why
    return None


def _array_header(unpacker: Any, what: str) -> int:
    try:
        return unpacker.read_array_header()  # type: ignore[no-any-return]
    except ValueError:  # msgpack's "Unexpected type header on stream"
        raise BadSnapshot(f"{what} is not a msgpack array") from None
