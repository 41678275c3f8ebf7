"""AsyncClient: the one implementation of leader tracking, retries, deadlines and ``Maybe``.

The client remembers which server answered last and tries it first. On
``WrongLeader``, a timeout or a connection error it moves to the next server,
wrapping around — or straight to the leader a follower names in its
``NotLeaderResult``, and only after a third timeout in a row from the server
that answered last (on a lossy network a lost message is likelier than a new
leader); after a whole round without an answer it backs off briefly so
an election can finish. ``deadline=None`` retries forever (the classic
contract); a number of seconds raises :class:`Unavailable` after that long.

``Maybe`` (the README's contract): once a put had to be resent after an attempt whose
outcome is unknown (a timeout, a connection lost after sending, or a
``WrongLeader`` from a server that had submitted it), a ``VersionMismatch``
answer no longer tells whether that attempt applied, so it becomes ``Maybe``.
Attempts that surely did nothing (``NotLeader``: the server never submitted
it; :class:`~kvraft.errors.NotSent`: the RPC layer never wrote it, because the
connection was refused, timed out while connecting, or was closed first) do
not count. So a put sent once never raises ``Maybe``: not when its one send
was answered, and not when every other attempt failed before it was written.

Sessions (``client/session.py``, ``server/sessions.py``) make ``Maybe`` rare:
every attempt of an operation carries the same ``(session, request id)``, and
the server applies it at most once and answers a resend with the first
attempt's result. So uncertain attempts count toward ``Maybe`` only where
the server may have lost that memory: attempts made in a session the server
then answered SessionExpired for (the client starts a new session and sends
the operation again there), and the attempts of a session's first request.

``Busy`` (the leader's admission budget is full; nothing was submitted): the
client waits a jittered, growing delay (bounded) and retries the same
server; past the deadline that is ``Unavailable``.

The data API (``docs/data-model.md``): ``set``, ``delete``, ``delete_range``,
``range`` and ``txn`` go through the same ``_in_session`` as get and put,
so they share its retries, deadline and sessions. ``delete`` at a version
becomes ``Maybe`` exactly as a put does; so does a ``txn`` whose retried
attempts end in a versioned op's failure or in the failure branch, where the
session cannot vouch that an earlier attempt did not apply.

``close()`` ends every call in flight: it cancels their retry loops, which
then raise :class:`~kvraft.errors.ClientClosed` (so do calls begun after it),
and closes the connections. A put ended that way may have applied.

Reads (``docs/reads.md``): ``get`` and ``range`` go through the log by
default (``read="log"``, the specification's rule). ``read="index"``, per
client or per call, sends ``get.index``/``range.index`` instead: the leader
confirms it still leads with one heartbeat round and answers from its
store, with no log entry and no fsync, and just as linearizable. Same
retries, deadline and errors; nothing is kept in the session.

Watch (``docs/data-model.md``): :meth:`AsyncClient.watch` long-polls
``watch.poll`` through the same ``_attempts`` (so the same server choice,
retries and deadline per poll), keeping the cursor itself: after a lost
connection or a leader change it polls the next server from the last event
it delivered, so no event is skipped or repeated. A poll is a read of the
server's history: nothing is kept in a session.

``Unauthorized`` (no token, a refused token, a role that does not allow the
call) is raised at once, never retried: nothing ran, and the same
credentials would be refused again. ``Unavailable`` names the last failure
seen (a refused connection, a certificate that did not verify, ...).
"""

from __future__ import annotations

import asyncio
import random
import ssl as ssl_module
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal

from kvraft.addresses import split_address
from kvraft.client.leases import LeaseCalls, raise_for_lease_result
from kvraft.client.session import ClientSession
from kvraft.errors import (
    Busy,
    CallTimeout,
    ClientClosed,
    Compacted,
    ConnectionLost,
    InvalidArgument,
    Maybe,
    NoKey,
    NotLeader,
    NotSent,
    ProtocolError,
    Unavailable,
    VersionMismatch,
    WrongLeader,
    one_line,
)
from kvraft.kv_protocol import (
    DEFAULT_MAX_VALUE_BYTES,
    FIRST_REQUEST_ID,
    MAX_CLIENT_ID_BYTES,
    MAX_REVISION,
    MAX_WATCH_EVENTS,
    MAX_WATCH_WAIT_S,
    CompactOk,
    CompactOp,
    Compare,
    DeleteOk,
    DeleteOp,
    DeleteRangeOp,
    GetOp,
    NoKeyResult,
    NotLeaderResult,
    Op,
    PutOp,
    RangeOp,
    RangeResult,
    SessionExpiredResult,
    SetOk,
    SetOp,
    StaleRequestResult,
    TxnOp,
    TxnOpFailedResult,
    TxnRequest,
    TxnResult,
    VersionMismatchResult,
    WatchBatch,
    WatchCompactedResult,
    WatchEvent,
    WatchPoll,
    check_client_id,
    check_op,
    prefix_end,
    result_of,
)
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender
from kvraft.rpc.tokens import check_token

# How a get or range reads (docs/reads.md): through the log, or read-index.
ReadMode = Literal["log", "index"]
READ_MODES: tuple[ReadMode, ...] = ("log", "index")

DEFAULT_CALL_TIMEOUT_S = 1.0
BACKOFF_S = 0.02
MAX_BACKOFF_S = 0.2
# Room a renewed session's name takes after the client id: "." and up to 11 digits.
SESSION_SUFFIX_BYTES = 12
# Timeouts in a row from the server that answered last before trying the next one.
TIMEOUTS_BEFORE_MOVING_ON = 2
# Servers a client adds to those it was given, learned from NotLeader answers
# (AsyncClient._learn): a bound, so a server that names a new leader at every
# answer cannot grow the client without end.
MAX_LEARNED_SERVERS = 16
# Waits after a Busy answer: doubling from the first, at most the last, each
# jittered down to half so clients refused together do not come back together.
BUSY_BACKOFF_S = 0.01
MAX_BUSY_BACKOFF_S = 0.5
# How long a watch poll waits on the server for an event before an empty answer
# (then the client polls again): the longest a dead-but-connected server can
# hold a watch before the client moves on is this plus call_timeout_s.
WATCH_POLL_WAIT_S = 5.0


def _bounds(prefix: str | None, start: str | None, end: str | None) -> tuple[str, str]:
    """The ``[start, end)`` of a range given by ``prefix`` or by ``start``/``end``."""
    if prefix is not None:
        if start is not None or end is not None:
            raise InvalidArgument("give prefix, or start and end, not both")
        if type(prefix) is not str:
            raise InvalidArgument(f"prefix must be str, not {type(prefix).__name__}")
        return prefix, prefix_end(prefix)
    if start is None:
        raise InvalidArgument("give prefix, or start (and end)")
    return start, "" if end is None else end


def check_read_mode(read: object) -> ReadMode:
    """``read`` if it is a read mode; InvalidArgument (nothing sent) if not."""
    if read == "log":
        return "log"
    if read == "index":
        return "index"
    raise InvalidArgument(f"read must be one of {', '.join(map(repr, READ_MODES))}, not {read!r}")


def may_have_applied(failure: Exception) -> bool:
    """Whether a failed attempt may have applied: False only if it surely did not.

    NotLeader: the server did not submit it. NotSent: the RPC layer never
    wrote it. Anything else (a timeout or a lost connection after the write,
    a WrongLeader from a server that had submitted it) is unknown.
    """
    return not isinstance(failure, NotLeader | NotSent)


class AsyncClient(LeaseCalls):
    """Asyncio client of a kvraft cluster; see the module docstring for the contract."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        deadline: float | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        client_id: str | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        read: ReadMode = "log",
    ) -> None:
        """``token``: presented to servers started with ``--auth-token-file``
        (a request its role does not allow raises :class:`~kvraft.Unauthorized`).
        ``ssl``: connect with TLS, e.g. ``kvraft.client_tls_context(cacert=...)``,
        to servers started with ``--cert-file``. ``read``: how ``get`` and
        ``range`` read unless a call says otherwise, ``"log"`` or ``"index"``
        (module docstring; InvalidArgument for anything else)."""
        if not servers:
            raise ValueError("a client needs at least one server address")
        self.read: ReadMode = check_read_mode(read)
        for address in servers:
            split_address(address)
        self.servers = list(servers)
        self.deadline = deadline
        self.call_timeout_s = call_timeout_s
        self.client_id = client_id or uuid.uuid4().hex
        # Checked here, not at the first call: a renewed session is named
        # "<client_id>.<n>", and that must still fit the server's bound.
        check_client_id(self.client_id, MAX_CLIENT_ID_BYTES - SESSION_SUFFIX_BYTES)
        self.max_value_bytes = max_value_bytes
        if token is not None:
            check_token(token)
        self._ssl, self._token = ssl, token
        self._rpc = [self._rpc_for(a) for a in self.servers]
        self._given = len(self.servers)  # the rest were learned (see _learn)
        self._leader = 0
        self._answered: int | None = None  # the server that answered last
        self._index = {address: i for i, address in enumerate(self.servers)}
        self._closed = False
        self._session = ClientSession(self.client_id)
        self._sessions_renewed = 0
        # The tasks inside _in_session now, and those of them close() cancelled.
        self._calls: set[asyncio.Task[Any]] = set()
        self._cancelled_by_close: set[asyncio.Task[Any]] = set()

    def _rpc_for(self, address: str) -> RpcClient:
        return RpcClient(address, client_sender(self.client_id), ssl=self._ssl, token=self._token)

    def _learn(self, address: str) -> int | None:
        """The index of the server at ``address``, a NotLeader answer's leader; None if none.

        An address the client was not given is added to :attr:`servers` (at
        most :data:`MAX_LEARNED_SERVERS` of them): a cluster whose members
        were replaced or grown (docs/membership.md) may be led by a server
        none of the given addresses name, and its followers say where it is.
        Only a server the client already talks to can name one, so the token
        and TLS settings it gets are those the client trusts that server with.
        """
        index = self._index.get(address)
        if index is not None or not address:
            return index
        if len(self.servers) - self._given >= MAX_LEARNED_SERVERS:
            return None
        try:
            split_address(address)
        except ValueError:
            return None
        self.servers.append(address)
        self._rpc.append(self._rpc_for(address))
        index = self._index[address] = len(self.servers) - 1
        return index

    def _read_method(self, method: str, read: ReadMode | None) -> str:
        """The method that reads as ``read`` says (None: the client's mode)."""
        mode = self.read if read is None else check_read_mode(read)
        return method if mode == "log" else f"{method}.index"

    async def get(self, key: str, *, read: ReadMode | None = None) -> tuple[str, int]:
        """``(value, version)`` of ``key``; raises NoKey if it does not exist.

        ``read``: ``"log"`` or ``"index"`` for this call (None: the client's).
        """
        method = self._read_method("get", read)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return GetOp(key=key, client_id=session, request_id=request_id, acked_below=acked_below)

        value, version = result_of(await self._in_session(method, build))
        assert value is not None
        return value, version

    async def put(self, key: str, value: str, version: int, *, lease: int = 0) -> int:
        """Store ``value`` if ``key`` is at ``version``; returns the new version.

        Raises NoKey (version > 0 on a missing key), VersionMismatch, or Maybe
        (resent after an attempt with an unknown outcome, it met
        VersionMismatch: it may have applied). Unavailable and ClientClosed
        leave it unknown whether the put applied. ``lease``: attach the key
        to that lease (0: to none, detaching it); LeaseNotFound if the lease
        is not live, and then nothing changed.
        """

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return PutOp(
                key=key,
                value=value,
                version=version,
                client_id=session,
                request_id=request_id,
                acked_below=acked_below,
                lease=lease,
            )

        outcomes: list[bool] = []
        try:
            result = await self._in_session("put", build, outcomes)
            raise_for_lease_result(result)
            _, new_version = result_of(result)
        except VersionMismatch as exc:
            if any(outcomes):
                raise Maybe(f"put of {key!r} at version {version} was resent: {exc}") from None
            raise
        return new_version

    async def set(self, key: str, value: str, *, lease: int = 0) -> int:
        """Store ``value`` at ``key`` whatever its version; returns the new version.

        ``lease`` as for :meth:`put`.
        """

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return SetOp(key, value, session, request_id, acked_below, lease)

        result = await self._in_session("set", build)
        raise_for_lease_result(result)
        if not isinstance(result, SetOk):
            raise ProtocolError(f"not a set result: {type(result).__name__}")
        return result.version

    async def delete(self, key: str, version: int) -> int:
        """Delete ``key`` if it is at ``version``; returns the revision the delete made.

        Raises NoKey (the key does not exist), VersionMismatch (it is at
        another version; 0 never matches an existing key), or Maybe (resent
        after an attempt with an unknown outcome, it met NoKey or
        VersionMismatch: it may have applied), as put does.
        """

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return DeleteOp(key, version, session, request_id, acked_below)

        outcomes: list[bool] = []
        result = await self._in_session("delete", build, outcomes)
        match result:
            case DeleteOk(revision=revision):
                return revision
            case NoKeyResult() | VersionMismatchResult() if any(outcomes):
                raise Maybe(f"delete of {key!r} at version {version} was resent: {result}")
            case NoKeyResult():
                raise NoKey("no such key")
            case VersionMismatchResult(current_version=current):
                raise VersionMismatch(f"the key is at version {current}")
        raise ProtocolError(f"not a delete result: {type(result).__name__}")

    async def delete_range(
        self, *, prefix: str | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        """Delete every key with ``prefix``, or in ``[start, end)``; returns how many it removed.

        Unconditional. ``end`` None (or "") is "to the last key"; ``prefix``
        "" deletes every key.
        """
        first, last = _bounds(prefix, start, end)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return DeleteRangeOp(first, last, session, request_id, acked_below)

        result = await self._in_session("delete_range", build)
        if not isinstance(result, DeleteOk):
            raise ProtocolError(f"not a delete_range result: {type(result).__name__}")
        return result.deleted

    async def range(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = 0,
        keys_only: bool = False,
        read: ReadMode | None = None,
    ) -> RangeResult:
        """The keys with ``prefix``, or in ``[start, end)``, in order, with their metadata.

        Linearizable (through the log, like get, or read-index with ``read``
        ``"index"``). ``limit`` 0 is no limit;
        a reply holds at most ``MAX_RANGE_REPLY_BYTES`` (always one key at
        least), and ``more`` says whether keys remain: continue with
        ``start=last.key + "\\0"`` (and the same end) for the next page.
        """
        method = self._read_method("range", read)
        first, last = _bounds(prefix, start, end)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return RangeOp(first, last, limit, keys_only, session, request_id, acked_below)

        result = await self._in_session(method, build)
        if not isinstance(result, RangeResult):
            raise ProtocolError(f"not a range result: {type(result).__name__}")
        return result

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnRequest] = (),
        failure: Sequence[TxnRequest] = (),
    ) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``: atomically, as one log entry.

        Returns a TxnResult (``succeeded``, ``responses``, ``revision``).
        Raises NoKey or VersionMismatch, naming the op, if a versioned put or
        delete of the branch that ran did not match its key (then nothing of
        the txn applied), and Maybe where that, or a failure branch, met a
        resend the session cannot vouch for (module docstring).
        """
        cmp, ok, otherwise = tuple(compare), tuple(success), tuple(failure)

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return TxnOp(cmp, ok, otherwise, session, request_id, acked_below)

        outcomes: list[bool] = []
        result = await self._in_session("txn", build, outcomes)
        raise_for_lease_result(result)
        if isinstance(result, TxnOpFailedResult):
            branch = "success" if result.succeeded else "failure"
            where = f"txn {branch}[{result.index}]"
            if any(outcomes):
                raise Maybe(f"{where} failed after a resend: the txn may have applied")
            if result.current_version == 0:
                raise NoKey(f"{where}: no such key")
            raise VersionMismatch(f"{where}: the key is at version {result.current_version}")
        if not isinstance(result, TxnResult):
            raise ProtocolError(f"not a txn result: {type(result).__name__}")
        if not result.succeeded and any(outcomes):
            raise Maybe("txn compares failed after a resend: the txn may have applied")
        return result

    async def compact(self, revision: int) -> int:
        """Drop the watch history below ``revision`` on every server; the history's new start.

        A watch from below the returned revision raises Compacted. Through the
        log, like a write; a ``revision`` past the store's is clamped to its
        revision + 1 (every event so far dropped).
        """

        def build(session: str, request_id: int, acked_below: int) -> Op:
            return CompactOp(revision, session, request_id, acked_below)

        result = await self._in_session("compact", build)
        if not isinstance(result, CompactOk):
            raise ProtocolError(f"not a compact result: {type(result).__name__}")
        return result.first_revision

    def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
        poll_wait_s: float = WATCH_POLL_WAIT_S,
    ) -> AsyncIterator[WatchEvent]:
        """Every change of ``key`` (or of the keys with ``prefix``), in revision order.

        An async iterator of :class:`~kvraft.WatchEvent` (``type`` "put" or
        "delete", ``kv``, ``prev_kv`` if asked for, ``revision``); the events
        of one revision (a txn, a delete_range) come one after another, in
        the order the command made them. From ``start_revision`` (inclusive)
        if given, else from the revision the first server polled is at.
        Resumes across disconnects and leader changes with no gap and no
        duplicate. Raises :class:`~kvraft.Compacted` if no server has the
        history from where the watch stands any more (each is asked once; the
        error names the oldest revision any of them has), ClientClosed when
        the client closes, Unavailable if a poll finds no server within the
        client's deadline. ``aclose()`` (or leaving ``async for``) stops it;
        nothing is left on the servers but a poll that ends within
        ``poll_wait_s``.
        """
        if (key is None) == (prefix is None):
            raise InvalidArgument("give key or prefix, not both and not neither")
        if key is not None:
            if type(key) is not str:
                raise InvalidArgument(f"key must be str, not {type(key).__name__}")
            first, last = key, key + "\0"
        else:
            first, last = _bounds(prefix, None, None)
        if start_revision is not None and (
            type(start_revision) is not int or not 1 <= start_revision <= MAX_REVISION
        ):
            raise InvalidArgument(f"start_revision must be an int >= 1, not {start_revision!r}")
        if type(prev_kv) is not bool:
            raise InvalidArgument(f"prev_kv must be bool, not {prev_kv!r}")
        if not 0 < poll_wait_s <= MAX_WATCH_WAIT_S:
            raise InvalidArgument(f"poll_wait_s must be in (0, {MAX_WATCH_WAIT_S:g}]")
        return self._watch(first, last, start_revision or 0, prev_kv, poll_wait_s)

    async def _watch(
        self, start: str, end: str, next_revision: int, prev_kv: bool, wait_s: float
    ) -> AsyncIterator[WatchEvent]:
        """The watch loop: poll from the cursor, yield, move the cursor (see watch())."""
        skip = 0
        compacted: list[int] = []  # first revisions of the servers that said Compacted
        while True:
            poll = WatchPoll(start, end, next_revision, skip, MAX_WATCH_EVENTS, prev_kv, wait_s)
            result = await self._tracked(
                self._attempts(
                    "watch.poll", poll, None, call_timeout_s=wait_s + self.call_timeout_s
                )
            )
            if isinstance(result, WatchCompactedResult):
                # A server restarted from a snapshot keeps less history than the
                # others: ask each server once before giving up.
                compacted.append(result.first_revision)
                if len(compacted) < len(self.servers):
                    self._leader = (self._leader + 1) % len(self.servers)
                    continue
                first = min(compacted)
                raise Compacted(
                    f"revision {next_revision} is compacted: the history starts at {first}",
                    first_revision=first,
                )
            if not isinstance(result, WatchBatch):
                raise ProtocolError(f"not a watch result: {type(result).__name__}")
            compacted.clear()
            for event in result.events:
                yield event
            # Moved only once the batch is delivered: the next poll starts
            # right after the last event the consumer has seen.
            next_revision, skip = result.next_revision, result.skip

    async def _session_loop(
        self,
        method: str,
        build: Callable[[str, int, int], Op],
        uncertain: list[bool] | None = None,
    ) -> Any:
        """Run one operation under a request id of the session; its result.

        ``build(session_id, request_id, acked_below)`` makes the op (checked
        before anything is sent). Every attempt sends that same op. If the
        server forgot the session, a new one is started and the operation
        sent again there. Appends to ``uncertain`` the outcomes of attempts the
        server's session does not vouch for (module docstring).
        """
        while True:
            session = self._session
            request_id = await session.begin()
            attempts: list[bool] = []
            try:
                op = build(session.id, request_id, session.acked_below())
                check_op(op, self.max_value_bytes)
                result = await self._attempts(method, op, attempts)
            finally:
                session.end(request_id)
            if not isinstance(result, SessionExpiredResult | StaleRequestResult):
                if uncertain is not None and op.acked_below <= FIRST_REQUEST_ID:
                    uncertain.extend(attempts)
                return result
            if uncertain is not None:
                uncertain.extend(attempts)
            if self._session is session:
                self._sessions_renewed += 1
                renewed = f"{self.client_id}.{self._sessions_renewed}"
                check_client_id(renewed)  # SESSION_SUFFIX_BYTES leaves room for 10^11 renewals
                self._session = ClientSession(renewed)

    async def _in_session(
        self,
        method: str,
        build: Callable[[str, int, int], Op],
        uncertain: list[bool] | None = None,
    ) -> Any:
        """One operation, from waiting for its session's window to its answer;
        ClientClosed if close() ends it first.

        The calling task is registered for all of that (a call waiting for its
        turn in the session is in flight too), so that close() can cancel it;
        a cancellation that only close() asked for becomes ClientClosed, any
        other stays a cancellation.
        """
        return await self._tracked(self._session_loop(method, build, uncertain))

    async def _tracked(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Run ``call`` registered as in flight, so close() ends it with ClientClosed."""
        if self._closed:
            call.close()
            raise self._closed_error()
        task = asyncio.current_task()
        assert task is not None, "AsyncClient calls run in a task"
        self._calls.add(task)
        try:
            return await call
        except asyncio.CancelledError:
            if task in self._cancelled_by_close and task.cancelling() == 1:
                task.uncancel()
                raise self._closed_error() from None
            raise
        finally:
            self._calls.discard(task)
            self._cancelled_by_close.discard(task)

    def _closed_error(self) -> ClientClosed:
        return ClientClosed(f"client {self.client_id[:8]} is closed")

    async def _attempts(
        self,
        method: str,
        op: Any,
        uncertain: list[bool] | None,
        *,
        call_timeout_s: float | None = None,
    ) -> Any:
        """Send ``op`` until some server answers it, trying servers in turn.

        ``call_timeout_s``: each attempt's timeout, if not the client's (a
        watch poll waits on the server). Appends to ``uncertain``, for each
        failed attempt, whether it may have been applied: False only when it
        surely was not (NotLeader, NotSent).
        """
        loop = asyncio.get_running_loop()
        give_up = None if self.deadline is None else loop.time() + self.deadline
        failures_in_round = 0
        timeouts_here = 0
        backoff = BACKOFF_S
        busy_backoff = BUSY_BACKOFF_S
        last_failure: Exception | None = None
        # The latest connection a server closed or refused (not a timeout): a TLS
        # handshake that failed says why no server will ever answer, and must not
        # be hidden by the timeouts of later attempts on a slow machine.
        refusal: Exception | None = None
        while True:
            if self._closed:
                raise self._closed_error()
            timeout = self.call_timeout_s if call_timeout_s is None else call_timeout_s
            if give_up is not None:
                remaining = give_up - loop.time()
                if remaining <= 0:
                    last = ""
                    if last_failure is not None:
                        last = f" (last: {type(last_failure).__name__}: {one_line(last_failure)}"
                        if refusal is not None and refusal is not last_failure:
                            last += f"; before: {type(refusal).__name__}: {one_line(refusal)}"
                        last += ")"
                    raise Unavailable(
                        f"no answer from {', '.join(self.servers)} within {self.deadline}s{last}"
                    )
                timeout = min(timeout, remaining)
            index = self._leader
            try:
                result = await self._rpc[index].call(method, op, timeout)
                if isinstance(result, NotLeaderResult):
                    raise NotLeader(result.leader_address or "")
            except Busy:
                # The leader refused before submitting: back off, then try it again.
                if uncertain is not None:
                    uncertain.append(False)
                self._answered = index
                delay = random.uniform(busy_backoff / 2, busy_backoff)
                if give_up is not None:
                    delay = min(delay, max(0.0, give_up - loop.time()))
                await asyncio.sleep(delay)
                busy_backoff = min(busy_backoff * 2, MAX_BUSY_BACKOFF_S)
                continue
            except (WrongLeader, CallTimeout, ConnectionLost) as exc:
                last_failure = exc
                if isinstance(exc, ConnectionLost) and not isinstance(exc, CallTimeout):
                    refusal = exc
                if uncertain is not None:
                    uncertain.append(may_have_applied(exc))
                hint = self._learn(str(exc)) if isinstance(exc, NotLeader) else None
                if hint is not None:
                    self._leader = hint
                elif (
                    isinstance(exc, CallTimeout)
                    and index == self._answered
                    and timeouts_here < TIMEOUTS_BEFORE_MOVING_ON
                ):
                    # The server that answered last is most likely still the leader;
                    # on a lossy network a lost request or reply is likelier than a
                    # new leader, and another server would only redirect us back.
                    timeouts_here += 1
                    continue
                else:
                    self._leader = (index + 1) % len(self.servers)
                timeouts_here = 0
                failures_in_round += 1
                if failures_in_round >= len(self.servers):
                    failures_in_round = 0
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self._answered = index
            return result

    async def close(self) -> None:
        """End every call in flight with ClientClosed, and close the connections.

        Call it on the client's event loop. The calls' retry loops are
        cancelled, so they end at their next step, whatever their deadline;
        later calls raise ClientClosed at once. Idempotent.
        """
        self._closed = True
        current = asyncio.current_task()
        for task in list(self._calls):
            if task is not current and task not in self._cancelled_by_close:
                self._cancelled_by_close.add(task)
                task.cancel()
        for rpc in self._rpc:
            rpc.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
