"""Explaining a violation found by :mod:`kvraft.testing.linearizability`.

Its one job: turn "key k is not linearizable" into a report a human can act
on. For a key that fails, it shrinks the history to a small core: it drops
gets and failed puts and weakens completed puts to UNKNOWN ("may have
applied, any time after its call"), in halving chunks (delta debugging),
keeping each change that still leaves the key non-linearizable. What stays
strong is a 1-minimal set (if the shrink finished within its own budget) of
operations that cannot be linearized together, printed with their times,
the longest order the search found and the key's state after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

from kvraft.testing.history import Operation, OpKind, Outcome
from kvraft.testing.linearizability_search import KeyOp, SearchResult, reduce_key, search

# How many operations a violation report lists before it elides the rest.
_REPORT_LIMIT = 40


def _weaken(op: Operation) -> Operation | None:
    """A weaker operation (one allowing every behaviour ``op`` allowed), or None: drop it."""
    if op.kind is OpKind.GET or op.outcome in (Outcome.MISMATCH, Outcome.NO_KEY):
        return None  # changed nothing: dropping it only removes constraints
    if op.outcome is Outcome.UNKNOWN:
        return op
    return replace(op, outcome=Outcome.UNKNOWN, result_version=None, return_s=math.inf)


def explain(
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
        return search(reduce_key(variant(extra)), deadline).verdict is False

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
    tracked = search(reduce_key(final), math.inf, track=True)
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
    tracked: SearchResult,
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
    best: list[tuple[KeyOp, bool]], original: dict[int, Operation], weakened: set[int]
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
