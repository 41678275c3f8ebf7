"""A linearizability checker for histories of the versioned KV service.

Theory of operation. A history is linearizable if every operation can be
given a single instant inside its ``[call, return]`` interval such that the
operations, run one by one in the order of those instants, give the answers
the clients saw (Herlihy & Wing). The checker searches for such an order the
way Wing & Gong do, with the improvements of Lowe and of porcupine
(Athalye's Go checker):

- **Partition by key.** Linearizability is local: a history is linearizable
  iff its restriction to every object is. Each key is a separate object of
  the model, so each key is checked alone, which turns one exponential
  search into several small ones.
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
  that point (proof at :func:`_search`): concurrent reads then cost a linear
  number of states instead of one per subset of them.

The model of one key is its state: ``(value, version)``, ``(None, 0)`` when
missing. A get OK needs exactly that pair; a get NoKey needs a missing key;
a put OK needs ``state.version == version`` and a reply of ``version + 1``,
and leaves ``(value, version + 1)``; a put VersionMismatch needs an existing
key at another version (and the reported version, if any); a put NoKey
needs a missing key and ``version > 0``.

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

Explaining a violation. For a key that fails, the checker shrinks the
history to a small core: it drops gets and failed puts and weakens
completed puts to UNKNOWN ("may have applied, any time after its call"),
in halving chunks (delta debugging), keeping each change that still leaves
the key non-linearizable. What stays strong is a 1-minimal set (if the
shrink finished within its own budget) of
operations that cannot be linearized together, printed with their times,
the longest order the search found and the key's state after it.

A budget bounds the work: when it runs out the answer is ``None``
(undecided), which :func:`assert_linearizable` treats as a failure.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from kvraft.testing.history import History, Operation, OpKind, Outcome

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_EXPLAIN_TIMEOUT_S = 5.0
# How many operations a violation report lists before it elides the rest.
_REPORT_LIMIT = 40

# The model state of one key: (value, version); (None, 0) while the key is missing.
State = tuple[str | None, int]
_MISSING: State = (None, 0)

# What an operation demands of the state, precomputed once per operation.
_GET_OK, _GET_NO_KEY, _PUT_OK, _PUT_MISMATCH, _PUT_NO_KEY, _PUT_OPTIONAL, _NEVER = range(7)


# ------------------------------------------------------------------- results


@dataclass(frozen=True)
class KeyResult:
    """The verdict for one key: ``ok`` True, False, or None (budget ran out)."""

    key: str
    ok: bool | None
    operations: int
    states_explored: int
    elapsed_s: float
    # For a violation: a small set of operations that cannot be linearized together.
    core: tuple[Operation, ...] = ()
    explanation: str = ""


@dataclass(frozen=True)
class CheckResult:
    """The verdict for a history: ``ok`` is True, False, or None (undecided).

    ``ok`` is False as soon as one key is not linearizable, None if none is
    but some key was not decided within the budget. Never use the result as
    a bool: an undecided check is not a pass (``bool()`` raises).
    """

    ok: bool | None
    keys: dict[str, KeyResult]
    operations: int
    elapsed_s: float
    explanation: str = ""
    violations: tuple[KeyResult, ...] = field(default=())

    def __bool__(self) -> bool:
        raise TypeError("a CheckResult is not a bool: test `.ok is True` (None is undecided)")


# ------------------------------------------------------------ internal model


class _Op:
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


def _step(state: State, op: _Op) -> State | None:
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
    return None


class _Entry:
    """A call or return event in the search's doubly linked list."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: _Op | None, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None  # call <-> return of the same operation
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build_list(ops: Sequence[_Op]) -> _Entry:
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
class _Search:
    verdict: bool | None
    explored: int
    # With tracking on: the longest linearization found, as (operation, applied).
    best: list[tuple[_Op, bool]] = field(default_factory=list)
    best_state: State = _MISSING


class _Frame(NamedTuple):
    """One linearized operation on the search stack."""

    call: _Entry
    before: State  # the model state before it
    # Whether it was the only move worth trying at its node (a state-preserving
    # operation, or a did-nothing at its last moment): if what follows fails,
    # its node fails too, and backtracking goes on past it.
    forced: bool
    applied: bool  # False: a MAYBE/UNKNOWN put linearized as "did nothing"


def _search(ops: Sequence[_Op], deadline: float, track: bool = False) -> _Search:
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
    state: State = _MISSING
    bits = 0
    cache: set[tuple[int, int, State]] = set()
    stack: list[_Frame] = []
    result = _Search(None, 0)
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


def _remember(result: _Search, stack: list[_Frame], state: State) -> None:
    result.best = [(f.call.op, f.applied) for f in stack if f.call.op is not None]
    result.best_state = state


def _reduce(indexed: Iterable[tuple[int, Operation]]) -> list[_Op]:
    """The key's operations as search operations, numbered in call order.

    UNKNOWN gets constrain nothing and are left out.
    """
    ops: list[_Op] = []
    for index, op in sorted(indexed, key=lambda item: (item[1].call_s, item[0])):
        if op.kind is OpKind.GET and op.outcome is Outcome.UNKNOWN:
            continue
        ops.append(_Op(index, len(ops), op))
    return ops


# ------------------------------------------------------------------ checking


def check(
    history: History | Iterable[Operation],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    explain_timeout_s: float = DEFAULT_EXPLAIN_TIMEOUT_S,
) -> CheckResult:
    """Whether ``history`` is linearizable for the versioned-KV model.

    ``timeout_s`` bounds the search over all keys (smallest keys first); a
    key not decided in time is undecided (None). A key that fails is then
    shrunk to a small core for the report, within ``explain_timeout_s`` of
    its own (the verdict does not depend on it: an interrupted shrink only
    leaves a larger core).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    ops = history.operations() if isinstance(history, History) else list(history)
    origin = min((op.call_s for op in ops), default=0.0)
    by_key: dict[str, list[tuple[int, Operation]]] = defaultdict(list)
    for index, op in enumerate(ops):
        by_key[op.key].append((index, op))

    results: dict[str, KeyResult] = {}
    for key, indexed in sorted(by_key.items(), key=lambda kv: (len(kv[1]), kv[0])):
        key_started = time.monotonic()
        search = _search(_reduce(indexed), deadline)
        elapsed = time.monotonic() - key_started
        if search.verdict is False:
            core, text = _explain(key, indexed, origin, explain_timeout_s)
            results[key] = KeyResult(key, False, len(indexed), search.explored, elapsed, core, text)
        elif search.verdict is None:
            text = (
                f"key {key!r}: undecided: the {timeout_s:g} s budget ran out after "
                f"{search.explored} states ({len(indexed)} operations)"
            )
            results[key] = KeyResult(key, None, len(indexed), search.explored, elapsed, (), text)
        else:
            results[key] = KeyResult(key, True, len(indexed), search.explored, elapsed)

    violations = tuple(r for r in results.values() if r.ok is False)
    undecided = [r for r in results.values() if r.ok is None]
    ok: bool | None = False if violations else (None if undecided else True)
    elapsed_s = time.monotonic() - started
    if ok is True:
        text = f"linearizable: {len(ops)} operations on {len(results)} keys in {elapsed_s:.3f} s"
    else:
        parts = [r.explanation for r in violations] + [r.explanation for r in undecided]
        text = "\n\n".join(parts)
    ordered = {key: results[key] for key in sorted(results)}
    return CheckResult(ok, ordered, len(ops), elapsed_s, text, violations)


def assert_linearizable(
    history: History | Iterable[Operation], timeout_s: float = DEFAULT_TIMEOUT_S
) -> CheckResult:
    """Check ``history``; raise AssertionError if it is not linearizable OR undecided.

    An undecided check must fail a test, never pass it: a checker that gives
    up silently would hide exactly the histories that are hard to explain.
    """
    result = check(history, timeout_s)
    if result.ok is not True:
        verdict = "not linearizable" if result.ok is False else "linearizability undecided"
        raise AssertionError(f"history of {result.operations} operations {verdict}:\n\n"
                             f"{result.explanation}")  # fmt: skip
    return result


# ------------------------------------------------------------------ explaining


def _weaken(op: Operation) -> Operation | None:
    """A weaker operation (one allowing every behaviour ``op`` allowed), or None: drop it."""
    if op.kind is OpKind.GET or op.outcome in (Outcome.MISMATCH, Outcome.NO_KEY):
        return None  # changed nothing: dropping it only removes constraints
    if op.outcome is Outcome.UNKNOWN:
        return op
    return replace(op, outcome=Outcome.UNKNOWN, result_version=None, return_s=math.inf)


def _explain(
    key: str, indexed: list[tuple[int, Operation]], origin: float, budget_s: float
) -> tuple[tuple[Operation, ...], str]:
    """Shrink a failing key to a 1-minimal core and describe it for a human."""
    deadline = time.monotonic() + budget_s
    weak: set[int] = set()

    def variant(extra: Iterable[int] = ()) -> list[tuple[int, Operation]]:
        weakened = weak.union(extra)
        out: list[tuple[int, Operation]] = []
        for n, (index, op) in enumerate(indexed):
            if n in weakened:
                w = _weaken(op)
                if w is None:
                    continue
                op = w
            out.append((index, op))
        return out

    def still_fails(extra: Sequence[int]) -> bool:
        return _search(_reduce(variant(extra)), deadline).verdict is False

    candidates = [n for n, (_, op) in enumerate(indexed) if op.outcome is not Outcome.UNKNOWN]
    chunk = max(1, len(candidates) // 2)
    complete = True
    while candidates:
        i, changed = 0, False
        while i < len(candidates):
            if time.monotonic() > deadline:
                complete = False
                break
            trial = candidates[i : i + chunk]
            if still_fails(trial):
                weak.update(trial)
                del candidates[i : i + chunk]
                changed = True
            else:
                i += chunk
        if not complete or (chunk == 1 and not changed):
            break  # out of time, or no single operation can go: 1-minimal
        chunk = max(1, chunk // 2)

    final = variant()
    # UNKNOWN operations claim nothing: they stay, in the background, like the weakened ones.
    core = tuple(
        op
        for n, (_, op) in enumerate(indexed)
        if n not in weak and op.outcome is not Outcome.UNKNOWN
    )
    tracked = _search(_reduce(final), math.inf, track=True)
    assert tracked.verdict is False, "a shrunk core must still fail"
    return core, _describe(key, indexed, weak, tracked, origin, complete)


def _line(index: int, op: Operation, origin: float) -> str:
    def ms(t: float) -> str:
        return "      never" if math.isinf(t) else f"{(t - origin) * 1e3:9.3f} ms"

    times = f"[{ms(op.call_s)} .. {ms(op.return_s)}]"
    return f"  #{index:<5} {op.client_id:>8}  {times}  {op.describe()}"


def _describe(
    key: str,
    indexed: list[tuple[int, Operation]],
    weak: set[int],
    tracked: _Search,
    origin: float,
    complete: bool,
) -> str:
    strong = [
        (index, op)
        for n, (index, op) in enumerate(indexed)
        if n not in weak and op.outcome is not Outcome.UNKNOWN
    ]
    lines = [
        f"key {key!r}: NOT linearizable. {len(strong)} of its {len(indexed)} operations cannot "
        f"be linearized together,",
        "even with every other operation on the key dropped (gets, failed puts) or weakened",
        "to 'may have applied any time after its call' (puts)"
        + ("" if complete else " [shrinking stopped at its time budget: not minimal]")
        + ":",
    ]
    lines += [_line(index, op, origin) for index, op in strong[:_REPORT_LIMIT]]
    if len(strong) > _REPORT_LIMIT:
        lines.append(f"  ... and {len(strong) - _REPORT_LIMIT} more")
    placed = {op.index for op, _ in tracked.best}
    original = dict(indexed)
    weakened = {indexed[n][0] for n in weak}
    lines.append("Longest order the checker found for them:")
    lines += _order_lines(tracked.best, original, weakened) or ["  (none)"]
    value, version = tracked.best_state
    state = "missing (version 0)" if value is None else f"({value!r}, {version})"
    lines.append(f"after which the key is {state}, and no remaining operation fits next:")
    left = [(index, op) for index, op in strong if index not in placed]
    lines += [f"  #{index} {op.describe()}" for index, op in left[:_REPORT_LIMIT]]
    return "\n".join(lines)


def _order_lines(
    best: list[tuple[_Op, bool]], original: dict[int, Operation], weakened: set[int]
) -> list[str]:
    """The longest order, with long runs of weakened puts cut to their ends.

    The weakened puts only show how the key could reach the state the core
    needs; a run of hundreds of them says no more than its first and last.
    """
    lines: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) > 3:
            run[1:-1] = [f"     ... {len(run) - 2} more weakened puts ..."]
        lines.extend(run)
        run.clear()

    for n, (op, applied) in enumerate(best, 1):
        text = original[op.index].describe()
        if not applied:
            text = f"(did nothing) {text}"
        if op.index in weakened:
            run.append(f"  {n}. #{op.index} {text} [weakened: may have applied]")
        else:
            flush()
            lines.append(f"  {n}. #{op.index} {text}")
    flush()
    if len(lines) > _REPORT_LIMIT:
        lines[: len(lines) - _REPORT_LIMIT] = ["  ... (earlier steps left out)"]
    return lines
