"""The search behind :mod:`kvraft.testing.linearizability`: one key's operations, in order.

Its one job: decide whether the operations of one key can be linearized
against the model of that key, within a deadline. It searches the way Wing &
Gong do, with the improvements of Lowe and of porcupine (Athalye's Go checker):

- **Entry list with lift/unlift.** A key's call and return events sit in one
  doubly linked list sorted by time (a call before a return at equal times:
  operations that touch are concurrent, never ordered). The search scans
  from the head: a call may be linearized next if the model accepts it; the
  first return it meets belongs to an operation that must already have been
  linearized, so it backtracks. Linearizing an operation lifts its two
  entries out of the list in O(1); backtracking puts them back (dancing
  links, undone in LIFO order).
- **Memoization.** A pair (set of linearized operations as a bitset, model
  state) already explored can only fail again, so it is cut.
- **State-preserving operations go first.** A get or a failed put that fits
  the current state is linearized at once and no alternative is tried at
  that point (proof at :func:`search`): concurrent reads then cost a linear
  number of states instead of one per subset of them.

The model of one key is its state: ``(value, version)``, ``(None, 0)`` when
missing. A get OK needs exactly that pair; a get NoKey needs a missing key;
a put OK needs ``state.version == version`` and a reply of ``version + 1``,
and leaves ``(value, version + 1)``; a put VersionMismatch needs an existing
key at another version (and the reported version, if any); a put NoKey
needs a missing key and ``version > 0``. A set OK needs a reply of
``state.version + 1`` and leaves ``(value, state.version + 1)``; a delete OK
needs an existing key at its version and leaves it missing; a delete NoKey
a missing key; a delete VersionMismatch an existing key at another version.
A MAYBE or UNKNOWN set or delete is optional like such a put (below).

Puts that may or may not have applied. A MAYBE put either applied (at an
instant in its interval where the versions matched) or did nothing; an
UNKNOWN put likewise, with an interval that never ends. Doing nothing
commutes with everything, so instead of branching at the call the checker
tries "applied" at the call and "did nothing" only when the scan reaches
the put's return entry, the last moment it could happen: this is complete
(a no-op can always be moved to that point) and keeps the model
deterministic (one next state per move). An UNKNOWN put's return is at
infinity: once the first return left in the list is infinite, every
remaining operation is UNKNOWN, they can all do nothing, and the search has
succeeded. UNKNOWN gets constrain nothing and are dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kvraft.testing.history import Operation, OpKind, Outcome

# The model state of one key: (value, version); (None, 0) while the key is missing.
State = tuple[str | None, int]
MISSING: State = (None, 0)

# What an operation demands of the state, precomputed once per operation.
_GET_OK, _GET_NO_KEY, _PUT_OK, _PUT_MISMATCH, _PUT_NO_KEY, _PUT_OPTIONAL, _NEVER = range(7)
_SET_OK, _SET_OPTIONAL, _DEL_OK, _DEL_OPTIONAL = range(7, 11)


class KeyOp:
    """One operation of one key, reduced to what the search needs."""

    __slots__ = ("demand", "index", "number", "optional", "preserving", "result", "ret",
                 "source", "update", "version")  # fmt: skip

    def __init__(self, index: int, number: int, source: Operation) -> None:
        self.index = index  # position in the whole history, for reports
        # Its bit in the search's bitsets; in call order (see _memo). Not kept as
        # 1 << number: n such ints would hold n^2/16 bytes.
        self.number = number
        self.source = source
        self.ret = source.return_s
        self.optional = source.outcome in (Outcome.MAYBE, Outcome.UNKNOWN)
        self.version = source.version if source.version is not None else 0
        self.result: State = (source.result_value, source.result_version or 0)
        self.update: State = (source.value, self.version + 1)
        self.demand = _demand(source)
        # Never changes the state when it fits: a get, or a put that did not apply.
        self.preserving = self.demand in (_GET_OK, _GET_NO_KEY, _PUT_MISMATCH, _PUT_NO_KEY)


def _demand(op: Operation) -> int:
    if op.kind is OpKind.GET:
        return _GET_OK if op.outcome is Outcome.OK else _GET_NO_KEY
    if op.kind is OpKind.SET:
        return _SET_OK if op.outcome is Outcome.OK else _SET_OPTIONAL
    if op.kind is OpKind.DELETE:
        match op.outcome:
            case Outcome.OK:
                return _DEL_OK
            case Outcome.MISMATCH:
                return _PUT_MISMATCH  # the same demand: an existing key at another version
            case Outcome.NO_KEY:
                return _GET_NO_KEY  # the same demand: a missing key
            case _:
                return _DEL_OPTIONAL
    version = op.version
    assert version is not None
    match op.outcome:
        case Outcome.OK:
            return _PUT_OK if op.result_version == version + 1 else _NEVER
        case Outcome.MISMATCH:
            return _PUT_MISMATCH
        case Outcome.NO_KEY:
            return _PUT_NO_KEY if version > 0 else _NEVER
        case _:
            return _PUT_OPTIONAL


def _step(state: State, op: KeyOp) -> State | None:
    """The state after linearizing ``op`` now, or None if its answer is impossible here."""
    demand = op.demand
    if demand == _GET_OK:
        return state if state == op.result else None
    if demand == _GET_NO_KEY:
        return state if state[0] is None else None
    if demand in (_PUT_OK, _PUT_OPTIONAL):
        return op.update if state[1] == op.version else None
    if demand == _PUT_MISMATCH:
        if state[0] is None or state[1] == op.version:
            return None
        reported = op.source.result_version
        return state if reported is None or reported == state[1] else None
    if demand == _PUT_NO_KEY:
        return state if state[0] is None else None
    if demand == _SET_OK:
        return (op.source.value, state[1] + 1) if op.source.result_version == state[1] + 1 else None
    if demand == _SET_OPTIONAL:
        return (op.source.value, state[1] + 1)
    if demand in (_DEL_OK, _DEL_OPTIONAL):
        return MISSING if state[0] is not None and state[1] == op.version else None
    return None


class _Entry:
    """A call or return event in the search's doubly linked list."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: KeyOp | None, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None  # call <-> return of the same operation
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build_list(ops: Sequence[KeyOp]) -> _Entry:
    """The events of ``ops`` in time order, calls first at equal times; returns the head."""
    events: list[tuple[float, int, int, _Entry]] = []
    for n, op in enumerate(ops):
        call, ret = _Entry(op, True), _Entry(op, False)
        call.match, ret.match = ret, call
        events.append((op.source.call_s, 0, n, call))
        events.append((op.ret, 1, n, ret))
    events.sort(key=lambda e: e[:3])
    head = _Entry(None, False)
    last = head
    for *_, entry in events:
        last.next, entry.prev = entry, last
        last = entry
    return head


def _lift(call: _Entry) -> None:
    """Unlink an operation's call and return entries (the return is after the call)."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    call.prev.next = call.next
    call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    """Relink what :func:`_lift` unlinked; valid only in reverse order of the lifts."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


@dataclass
class SearchResult:
    """What :func:`search` found: linearizable (True), not (False) or out of time (None)."""

    verdict: bool | None
    explored: int
    # With tracking on: the longest linearization found, as (operation, applied).
    best: list[tuple[KeyOp, bool]] = field(default_factory=list)
    best_state: State = MISSING


class _Frame(NamedTuple):
    """One linearized operation on the search stack."""

    call: _Entry
    before: State  # the model state before it
    # Whether it was the only move worth trying at its node (a state-preserving
    # operation, or a did-nothing at its last moment): if what follows fails,
    # its node fails too, and backtracking goes on past it.
    forced: bool
    applied: bool  # False: a MAYBE/UNKNOWN put linearized as "did nothing"


def search(ops: Sequence[KeyOp], deadline: float, track: bool = False) -> SearchResult:
    """Wing & Gong's depth-first search with porcupine's list and memoization.

    One more cut, for operations that leave the state as it is (gets, failed
    puts): if one fits the state now, linearizing it now loses nothing. Any
    valid continuation can move it to the front: everything that must
    precede it is linearized already (its call is before the first pending
    return), and it changes no state the others see. So it is the only move
    tried at its node, and reads that pile up concurrently cost a linear
    number of states, not one per subset.

    Invariant: ``bits`` has the bit of every operation on ``stack``, and
    ``state`` is the model state after applying them in stack order.
    """
    head = _build_list(ops)
    state: State = MISSING
    bits = 0
    cache: set[tuple[int, int, State]] = set()
    stack: list[_Frame] = []
    result = SearchResult(None, 0)
    steps = 0
    entry = head.next
    while entry is not None:
        steps += 1
        if not steps & 0x3FF and time.monotonic() > deadline:
            result.explored = len(cache)
            return result
        op = entry.op
        assert op is not None
        frame: _Frame | None = None
        if entry.is_call:
            stepped = _step(state, op)
            if stepped is None:
                entry = entry.next
                continue
            new_bits, new = bits | 1 << op.number, stepped
            memo = _memo(new_bits, new)
            if memo not in cache:
                frame = _Frame(entry, state, op.preserving, True)
            elif not op.preserving:
                entry = entry.next
                continue
            # else: a state-preserving move already explored: this node fails
        elif math.isinf(op.ret):
            break  # the first return left is at infinity: all left are UNKNOWN, do nothing
        elif op.optional:  # the last moment this MAYBE put can do nothing
            new_bits, new = bits | 1 << op.number, state
            memo = _memo(new_bits, new)
            if memo not in cache:
                assert entry.match is not None
                frame = _Frame(entry.match, state, True, False)
        if frame is not None:
            cache.add(memo)
            stack.append(frame)
            bits, state = new_bits, new
            _lift(frame.call)
            if track and len(stack) > len(result.best):
                _remember(result, stack, state)
            entry = head.next
            continue
        # No move left at this node: backtrack to the latest one with options left.
        while True:
            if not stack:
                result.verdict = False
                result.explored = len(cache)
                return result
            frame = stack.pop()
            _unlift(frame.call)
            assert frame.call.op is not None
            bits ^= 1 << frame.call.op.number
            state = frame.before
            if not frame.forced:
                entry = frame.call.next
                break
    result.verdict = True
    result.explored = len(cache)
    if track:
        _remember(result, stack, state)
    return result


def _memo(bits: int, state: State) -> tuple[int, int, State]:
    """The cache key of a node: its bitset stored as (w, bits >> w) with w its
    lowest unset bit. Operations are numbered in call order and mostly
    linearized in that order, so the bits below w are a long run of ones and
    the rest is short: a key costs a few words, not n/8 bytes per node.
    """
    low = ((bits + 1) & ~bits).bit_length() - 1
    return (low, bits >> low, state)


def _remember(result: SearchResult, stack: list[_Frame], state: State) -> None:
    result.best = [(f.call.op, f.applied) for f in stack if f.call.op is not None]
    result.best_state = state


def reduce_key(indexed: Iterable[tuple[int, Operation]]) -> list[KeyOp]:
    """The key's operations as search operations, numbered in call order.

    UNKNOWN gets constrain nothing and are left out.
    """
    ops: list[KeyOp] = []
    for index, op in sorted(indexed, key=lambda item: (item[1].call_s, item[0])):
        if op.kind is OpKind.GET and op.outcome is Outcome.UNKNOWN:
            continue
        ops.append(KeyOp(index, len(ops), op))
    return ops
