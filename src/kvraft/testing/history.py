"""Recording what concurrent clients did, for the linearizability checker.

A history is a list of :class:`Operation`: who called what on which key, what
came back, and when the call started and ended. Times come from one clock for
every client (``time.monotonic`` by default, system-wide, so threads, asyncio
tasks and processes on one host share it); an operation is invoked before its
request leaves and returns after its answer arrived, so the interval encloses
the moment the service acted on it.

Outcomes and what they tell the checker (see :mod:`kvraft.testing.linearizability`):

- ``OK``: a get's ``(value, version)``, a put's or a set's new version, a
  delete that applied;
- ``NO_KEY``: a get of a missing key, a put at version > 0 on one, a delete of one;
- ``MISMATCH``: a put or delete whose version was not the key's
  (``result_version``, the key's version then, when the client knows it);
- ``MAYBE``: a put or delete that may or may not have applied, inside its interval;
- ``UNKNOWN``: no answer (the client gave up, crashed, or the test ended): the
  operation may take effect at any time after its invocation, so its return
  time is infinity. An operation still pending when the history is read is
  reported as UNKNOWN.

Recording is thread-safe: many client threads or tasks share one History.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from kvraft.errors import Maybe, NoKey, VersionMismatch

R = TypeVar("R")


class OpKind(Enum):
    GET = "get"
    PUT = "put"
    # The data API's single-key writes: set(key, value) unconditional, delete(key, version).
    SET = "set"
    DELETE = "delete"


class Outcome(Enum):
    OK = "ok"
    NO_KEY = "NoKey"
    MISMATCH = "VersionMismatch"
    MAYBE = "Maybe"
    UNKNOWN = "unknown"


_GET_OUTCOMES = frozenset({Outcome.OK, Outcome.NO_KEY, Outcome.UNKNOWN})
# A set cannot fail: it applied (OK) or its answer never came.
_SET_OUTCOMES = frozenset({Outcome.OK, Outcome.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Operation:
    """One completed (or abandoned) operation of a history.

    ``value``/``version`` are a put's arguments (None for a get);
    ``result_value``/``result_version`` what came back: a get's ``(value,
    version)``, a put's new version, or the key's version reported with a
    mismatch (None when not known). Build them with :meth:`get` and
    :meth:`put`, which check that the fields fit together.
    """

    client_id: str
    kind: OpKind
    key: str
    value: str | None
    version: int | None
    outcome: Outcome
    result_value: str | None
    result_version: int | None
    call_s: float
    return_s: float

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(f"inconsistent operation: {problem}: {self!r}")

    def _problem(self) -> str | None:
        if not self.call_s <= self.return_s:
            return "returned before it was called"
        if math.isinf(self.return_s) != (self.outcome is Outcome.UNKNOWN):
            return "infinite return time goes with, and only with, the UNKNOWN outcome"
        if self.kind is OpKind.GET:
            if self.outcome not in _GET_OUTCOMES:
                return f"a get cannot end {self.outcome.value}"
            if self.value is not None or self.version is not None:
                return "a get has no value or version argument"
            has_result = self.result_value is not None and self.result_version is not None
            if (self.outcome is Outcome.OK) != has_result:
                return "a get has a (value, version) result iff it is OK"
            if self.result_value is None and self.result_version is not None:
                return "a get's result version needs a value"
            return None
        if self.kind is OpKind.SET:
            if self.outcome not in _SET_OUTCOMES:
                return f"a set cannot end {self.outcome.value}"
            if self.value is None or self.version is not None or self.result_value is not None:
                return "a set has a value, no version argument and no result value"
            if (self.outcome is Outcome.OK) != (self.result_version is not None):
                return "a set has its new version iff it is OK"
            return None
        if self.kind is OpKind.DELETE:
            if self.value is not None or self.version is None or self.result_value is not None:
                return "a delete has a version, no value and no result value"
            if self.outcome is not Outcome.MISMATCH and self.result_version is not None:
                return f"a {self.outcome.value} delete has no result version"
            return None
        if self.value is None or self.version is None:
            return "a put needs a value and a version"
        if self.result_value is not None:
            return "a put's result has no value"
        if (self.outcome is Outcome.OK) and self.result_version is None:
            return "an OK put needs its new version"
        if self.outcome in (Outcome.NO_KEY, Outcome.MAYBE, Outcome.UNKNOWN) and (
            self.result_version is not None
        ):
            return f"a {self.outcome.value} put has no result version"
        return None

    @property
    def pending(self) -> bool:
        """Whether the operation never got an answer (UNKNOWN)."""
        return self.outcome is Outcome.UNKNOWN

    @classmethod
    def get(
        cls,
        client_id: str,
        key: str,
        result: tuple[str, int] | Outcome,
        call_s: float,
        return_s: float | None = None,
    ) -> Operation:
        """A get that returned ``result``: ``(value, version)``, NO_KEY or UNKNOWN.

        ``return_s`` defaults to infinity for UNKNOWN (and must be given otherwise).
        """
        if isinstance(result, Outcome):
            outcome, value, version = result, None, None
        else:
            outcome, (value, version) = Outcome.OK, result
        return cls(
            client_id, OpKind.GET, key, None, None, outcome, value, version,
            call_s, _return_time(outcome, return_s),
        )  # fmt: skip

    @classmethod
    def put(
        cls,
        client_id: str,
        key: str,
        value: str,
        version: int,
        result: int | Outcome,
        call_s: float,
        return_s: float | None = None,
        *,
        current_version: int | None = None,
    ) -> Operation:
        """A put that returned ``result``: its new version, or an Outcome.

        ``current_version`` is the key's version a MISMATCH answer reported, if any.
        """
        if isinstance(result, Outcome):
            outcome, result_version = result, current_version
        else:
            outcome, result_version = Outcome.OK, result
        return cls(
            client_id, OpKind.PUT, key, value, version, outcome, None, result_version,
            call_s, _return_time(outcome, return_s),
        )  # fmt: skip

    @classmethod
    def set(
        cls,
        client_id: str,
        key: str,
        value: str,
        result: int | Outcome,
        call_s: float,
        return_s: float | None = None,
    ) -> Operation:
        """A set that returned ``result``: its new version, or UNKNOWN."""
        outcome, result_version = (
            (result, None)
            if isinstance(result, Outcome)
            else (
                Outcome.OK,
                result,
            )
        )
        return cls(
            client_id, OpKind.SET, key, value, None, outcome, None, result_version,
            call_s, _return_time(outcome, return_s),
        )  # fmt: skip

    @classmethod
    def delete(
        cls,
        client_id: str,
        key: str,
        version: int,
        result: Outcome,
        call_s: float,
        return_s: float | None = None,
        *,
        current_version: int | None = None,
    ) -> Operation:
        """A delete at ``version`` that ended ``result`` (OK if it applied)."""
        reported = current_version if result is Outcome.MISMATCH else None
        return cls(
            client_id, OpKind.DELETE, key, None, version, result, None, reported,
            call_s, _return_time(result, return_s),
        )  # fmt: skip

    def describe(self) -> str:
        """The call and its answer, e.g. ``put('k', 'v', version=2) -> ok, version 3``."""
        if self.kind is OpKind.GET:
            call = f"get({self.key!r})"
        elif self.kind is OpKind.SET:
            call = f"set({self.key!r}, {_short(self.value)})"
        elif self.kind is OpKind.DELETE:
            call = f"delete({self.key!r}, version={self.version})"
        else:
            call = f"put({self.key!r}, {_short(self.value)}, version={self.version})"
        match self.outcome:
            case Outcome.OK if self.kind is OpKind.GET:
                answer = f"({_short(self.result_value)}, {self.result_version})"
            case Outcome.OK if self.kind is OpKind.DELETE:
                answer = "ok, deleted"
            case Outcome.OK:
                answer = f"ok, version {self.result_version}"
            case Outcome.MISMATCH if self.result_version is not None:
                answer = f"VersionMismatch (key at version {self.result_version})"
            case Outcome.UNKNOWN:
                answer = "no answer (may take effect any time after its call)"
            case _:
                answer = self.outcome.value
        return f"{call} -> {answer}"


def _return_time(outcome: Outcome, return_s: float | None) -> float:
    if return_s is not None:
        return return_s
    if outcome is Outcome.UNKNOWN:
        return math.inf
    raise ValueError(f"a {outcome.value} operation needs its return time")


def _short(text: str | None, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


class PendingOp:
    """An invoked operation waiting for its answer; complete it exactly once.

    Not completing it at all is allowed: the history reports it as UNKNOWN.
    """

    __slots__ = ("_call_s", "_client_id", "_done", "_history", "_key", "_kind", "_slot",
                 "_value", "_version")  # fmt: skip

    def __init__(
        self,
        history: History,
        slot: int,
        client_id: str,
        kind: OpKind,
        key: str,
        value: str | None,
        version: int | None,
        call_s: float,
    ) -> None:
        self._history = history
        self._slot = slot
        self._client_id = client_id
        self._kind = kind
        self._key = key
        self._value = value
        self._version = version
        self._call_s = call_s
        self._done = False

    def _finish(
        self,
        outcome: Outcome,
        result_value: str | None = None,
        result_version: int | None = None,
    ) -> None:
        return_s = math.inf if outcome is Outcome.UNKNOWN else self._history.clock()
        op = Operation(
            self._client_id, self._kind, self._key, self._value, self._version, outcome,
            result_value, result_version, self._call_s, return_s,
        )  # fmt: skip
        with self._history._lock:
            if self._done:
                raise RuntimeError(f"operation completed twice: {op.describe()}")
            self._done = True
            self._history._ops[self._slot] = op

    def get_ok(self, value: str, version: int) -> None:
        """The get returned ``(value, version)``."""
        self._finish(Outcome.OK, value, version)

    def put_ok(self, new_version: int) -> None:
        """The put applied; the key is now at ``new_version``."""
        self._finish(Outcome.OK, None, new_version)

    def delete_ok(self) -> None:
        """The delete applied; the key is missing now."""
        self._finish(Outcome.OK)

    def no_key(self) -> None:
        self._finish(Outcome.NO_KEY)

    def mismatch(self, current_version: int | None = None) -> None:
        self._finish(Outcome.MISMATCH, None, current_version)

    def maybe(self) -> None:
        self._finish(Outcome.MAYBE)

    def unknown(self) -> None:
        """No answer will come: the operation may take effect at any later time."""
        self._finish(Outcome.UNKNOWN)

    def failed(self, exc: BaseException) -> None:
        """Record what an exception from the client means for this operation.

        NoKey, VersionMismatch and Maybe are answers; anything else (Unavailable,
        a timeout, cancellation, a crash) leaves the outcome UNKNOWN, which is
        always safe: it claims nothing about whether the operation applied.
        """
        versioned = self._kind in (OpKind.PUT, OpKind.DELETE)
        if isinstance(exc, NoKey) and self._kind is not OpKind.SET:
            self.no_key()
        elif isinstance(exc, VersionMismatch) and versioned:
            self.mismatch(getattr(exc, "current_version", None))
        elif isinstance(exc, Maybe) and versioned:
            self.maybe()
        else:
            self.unknown()


class History:
    """A thread-safe, append-only record of operations on one service.

    Either record calls as they happen (:meth:`invoke_get`/:meth:`invoke_put`
    then complete the returned :class:`PendingOp`, or let
    :meth:`record_get`/:meth:`record_put` and their async twins do both), or
    :meth:`add` ready-made operations (histories written by hand in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # None marks a slot whose operation is still pending.
        self._ops: list[Operation | None] = []
        self._pending: list[PendingOp | None] = []

    def _invoke(
        self, client_id: str, kind: OpKind, key: str, value: str | None, version: int | None
    ) -> PendingOp:
        with self._lock:
            slot = len(self._ops)
            self._ops.append(None)
            # Read the clock inside the lock: slots are then in invocation order.
            pending = PendingOp(self, slot, client_id, kind, key, value, version, self.clock())
            self._pending.append(pending)
        return pending

    def invoke_get(self, client_id: str, key: str) -> PendingOp:
        """Note that ``client_id`` is about to send get(key); complete the result later."""
        return self._invoke(client_id, OpKind.GET, key, None, None)

    def invoke_put(self, client_id: str, key: str, value: str, version: int) -> PendingOp:
        """Note that ``client_id`` is about to send put(key, value, version)."""
        return self._invoke(client_id, OpKind.PUT, key, value, version)

    def invoke_set(self, client_id: str, key: str, value: str) -> PendingOp:
        """Note that ``client_id`` is about to send set(key, value); complete with put_ok."""
        return self._invoke(client_id, OpKind.SET, key, value, None)

    def invoke_delete(self, client_id: str, key: str, version: int) -> PendingOp:
        """Note that ``client_id`` is about to send delete(key, version)."""
        return self._invoke(client_id, OpKind.DELETE, key, None, version)

    def add(self, op: Operation) -> None:
        """Append an already complete operation."""
        with self._lock:
            self._ops.append(op)
            self._pending.append(None)

    def extend(self, ops: Iterable[Operation]) -> None:
        for op in ops:
            self.add(op)

    def operations(self) -> list[Operation]:
        """Every operation so far; the ones still pending as UNKNOWN (return time infinity)."""
        with self._lock:
            ops = list(self._ops)
            pending = list(self._pending)
        result: list[Operation] = []
        for op, waiting in zip(ops, pending, strict=True):
            if op is None:
                assert waiting is not None
                op = Operation(
                    waiting._client_id, waiting._kind, waiting._key, waiting._value,
                    waiting._version, Outcome.UNKNOWN, None, None, waiting._call_s, math.inf,
                )  # fmt: skip
            result.append(op)
        return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    # ------------------------------------------------------------- call wrappers

    def record_get(
        self, client_id: str, key: str, call: Callable[[], tuple[str, int]]
    ) -> tuple[str, int]:
        """Run ``call()`` (a client's get of ``key``) and record it; errors re-raised."""
        return _recorded(self.invoke_get(client_id, key), call, lambda p, r: p.get_ok(*r))

    def record_put(
        self, client_id: str, key: str, value: str, version: int, call: Callable[[], int]
    ) -> int:
        """Run ``call()`` (a client's put) and record it; errors re-raised."""
        pending = self.invoke_put(client_id, key, value, version)
        return _recorded(pending, call, PendingOp.put_ok)

    async def arecord_get(
        self, client_id: str, key: str, call: Callable[[], Awaitable[tuple[str, int]]]
    ) -> tuple[str, int]:
        """:meth:`record_get` for a coroutine (``lambda: client.get(key)``)."""
        pending = self.invoke_get(client_id, key)
        try:
            value, version = await call()
        except BaseException as exc:
            pending.failed(exc)
            raise
        pending.get_ok(value, version)
        return value, version

    async def arecord_put(
        self,
        client_id: str,
        key: str,
        value: str,
        version: int,
        call: Callable[[], Awaitable[int]],
    ) -> int:
        """:meth:`record_put` for a coroutine (``lambda: client.put(key, value, version)``)."""
        pending = self.invoke_put(client_id, key, value, version)
        try:
            new_version = await call()
        except BaseException as exc:
            pending.failed(exc)
            raise
        pending.put_ok(new_version)
        return new_version

    def record_set(self, client_id: str, key: str, value: str, call: Callable[[], int]) -> int:
        """Run ``call()`` (a client's set) and record it; errors re-raised."""
        return _recorded(self.invoke_set(client_id, key, value), call, PendingOp.put_ok)

    def record_delete(self, client_id: str, key: str, version: int, call: Callable[[], int]) -> int:
        """Run ``call()`` (a client's delete at ``version``) and record it; errors re-raised."""
        pending = self.invoke_delete(client_id, key, version)
        return _recorded(pending, call, lambda p, _revision: p.delete_ok())


def _recorded(
    pending: PendingOp, call: Callable[[], R], finish: Callable[[PendingOp, R], None]
) -> R:
    """``call()``, its outcome recorded on ``pending``: ``finish`` on success, failed on raise."""
    try:
        result = call()
    except BaseException as exc:
        pending.failed(exc)
        raise
    finish(pending, result)
    return result
