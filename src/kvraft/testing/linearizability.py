"""A linearizability checker for histories of the versioned KV service.

Theory of operation. A history is linearizable if every operation can be
given a single instant inside its ``[call, return]`` interval such that the
operations, run one by one in the order of those instants, give the answers
the clients saw (Herlihy & Wing). Linearizability is local: a history is
linearizable iff its restriction to every object is. Each key is a separate
object of the model, so :func:`check` checks each key alone, which turns one
exponential search into several small ones, smallest keys first.

The work is in two modules with one job each:

- :mod:`kvraft.testing.linearizability_search`: whether one key's operations
  can be linearized (Wing & Gong's search with porcupine's improvements, the
  model of a key, and how puts of unknown outcome are treated);
- :mod:`kvraft.testing.linearizability_explain`: for a key that fails, a
  small core of operations that cannot be linearized together, described for
  a human.

A budget bounds the work: when it runs out the answer is ``None``
(undecided), which :func:`assert_linearizable` treats as a failure.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvraft.testing.history import History, Operation
from kvraft.testing.linearizability_explain import explain
from kvraft.testing.linearizability_search import State, reduce_key, search

__all__ = [
    "DEFAULT_EXPLAIN_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "CheckResult",
    "KeyResult",
    "State",
    "assert_linearizable",
    "check",
]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_EXPLAIN_TIMEOUT_S = 5.0


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
        found = search(reduce_key(indexed), deadline)
        elapsed = time.monotonic() - key_started
        if found.verdict is False:
            core, text = explain(key, indexed, origin, explain_timeout_s)
            results[key] = KeyResult(key, False, len(indexed), found.explored, elapsed, core, text)
        elif found.verdict is None:
            text = (
                f"key {key!r}: undecided: the {timeout_s:g} s budget ran out after "
                f"{found.explored} states ({len(indexed)} operations)"
            )
            results[key] = KeyResult(key, None, len(indexed), found.explored, elapsed, (), text)
        else:
            results[key] = KeyResult(key, True, len(indexed), found.explored, elapsed)

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
