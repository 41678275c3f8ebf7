"""The checker's model of the data API's single-key writes: set and versioned delete.

Hand-made histories, each with the reason it is (or is not) linearizable,
and a random test: histories produced by running set/delete/get/put against a
real KVStore in some order are always accepted, and changing one answer of
them is caught whenever the model says no order explains it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.errors import NoKey, VersionMismatch
from kvraft.server.kvstore import KVStore
from kvraft.testing.history import History, Operation, OpKind, Outcome
from kvraft.testing.linearizability import check


def accepted(*ops: Operation) -> bool:
    result = check(ops, timeout_s=5)
    assert result.ok is not None
    return bool(result.ok)


def test_set_creates_and_bumps_the_version() -> None:
    assert accepted(
        Operation.set("a", "k", "1", 1, 0, 1),
        Operation.set("a", "k", "2", 2, 2, 3),
        Operation.get("a", "k", ("2", 2), 4, 5),
    )
    # a set that claims a version the key could not have reached
    assert not accepted(Operation.set("a", "k", "1", 2, 0, 1))


def test_delete_makes_the_key_missing_and_versions_restart() -> None:
    assert accepted(
        Operation.put("a", "k", "v", 0, 1, 0, 1),
        Operation.delete("a", "k", 1, Outcome.OK, 2, 3),
        Operation.get("a", "k", Outcome.NO_KEY, 4, 5),
        Operation.put("a", "k", "w", 0, 1, 6, 7),
    )
    # a get after the delete returned cannot see the old value
    assert not accepted(
        Operation.put("a", "k", "v", 0, 1, 0, 1),
        Operation.delete("a", "k", 1, Outcome.OK, 2, 3),
        Operation.get("b", "k", ("v", 1), 4, 5),
    )


def test_delete_failures_and_maybe() -> None:
    assert accepted(
        Operation.delete("a", "k", 1, Outcome.NO_KEY, 0, 1),
        Operation.set("a", "k", "v", 1, 2, 3),
        Operation.delete("a", "k", 2, Outcome.MISMATCH, 4, 5, current_version=1),
    )
    assert not accepted(  # a mismatch on a missing key
        Operation.delete("a", "k", 1, Outcome.MISMATCH, 0, 1),
    )
    assert not accepted(  # NoKey on a key that exists
        Operation.set("a", "k", "v", 1, 0, 1),
        Operation.delete("a", "k", 1, Outcome.NO_KEY, 2, 3),
    )
    # a Maybe delete may have applied, or not: both later reads are explained
    for later in (("v", 1), Outcome.NO_KEY):
        assert accepted(
            Operation.set("a", "k", "v", 1, 0, 1),
            Operation.delete("a", "k", 1, Outcome.MAYBE, 2, 3),
            Operation.get("b", "k", later, 4, 5),
        )


def test_an_unknown_set_may_apply_any_time_after_its_call() -> None:
    assert accepted(
        Operation.set("a", "k", "x", Outcome.UNKNOWN, 0),
        Operation.get("b", "k", Outcome.NO_KEY, 1, 2),
        Operation.get("b", "k", ("x", 1), 3, 4),
    )
    assert not accepted(
        Operation.set("a", "k", "x", Outcome.UNKNOWN, 5),
        Operation.get("b", "k", ("x", 1), 1, 2),  # before the set was called
    )


def test_history_records_set_and_delete() -> None:
    history = History()
    assert history.record_set("a", "k", "v", lambda: 1) == 1
    assert history.record_delete("a", "k", 1, lambda: 7) == 7
    with pytest.raises(NoKey):
        history.record_delete("a", "k", 1, _raise(NoKey("gone")))
    with pytest.raises(VersionMismatch):
        history.record_delete("a", "k", 3, _raise(VersionMismatch("at 1")))
    kinds = [(op.kind, op.outcome) for op in history.operations()]
    assert kinds == [
        (OpKind.SET, Outcome.OK),
        (OpKind.DELETE, Outcome.OK),
        (OpKind.DELETE, Outcome.NO_KEY),
        (OpKind.DELETE, Outcome.MISMATCH),
    ]
    with pytest.raises(ValueError, match="a set cannot end"):
        Operation("a", OpKind.SET, "k", "v", None, Outcome.NO_KEY, None, None, 0, 1)


def _raise(exc: Exception):  # type: ignore[no-untyped-def]
    def call() -> int:
        raise exc

    return call


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4))
def test_sequential_runs_on_a_real_store_are_accepted_and_a_changed_answer_is_caught(
    seed: int, clients: int
) -> None:
    """Random ops run one at a time on a KVStore, each interval after the last:
    the real order is the only one, and the checker must find it."""
    rng = random.Random(seed)
    store = KVStore()
    ops: list[Operation] = []
    for t in range(12):
        cid, call_s, return_s = f"c{rng.randrange(clients)}", 2 * t, 2 * t + 1
        kind = rng.choice(["get", "set", "delete", "put"])
        version = rng.randint(0, 3)
        if kind == "get":
            got = store.lookup("k")
            ops.append(Operation.get(cid, "k", got or Outcome.NO_KEY, call_s, return_s))
        elif kind == "set":
            revision = store.revision + 1
            new = store.write("k", f"v{t}", revision)
            store.set_revision(revision)
            ops.append(Operation.set(cid, "k", f"v{t}", new, call_s, return_s))
        elif kind == "put":
            try:
                new = store.put("k", f"v{t}", version)
                ops.append(Operation.put(cid, "k", f"v{t}", version, new, call_s, return_s))
            except NoKey:
                ops.append(
                    Operation.put(cid, "k", f"v{t}", version, Outcome.NO_KEY, call_s, return_s)
                )
            except VersionMismatch:
                ops.append(
                    Operation.put(cid, "k", f"v{t}", version, Outcome.MISMATCH, call_s, return_s)
                )
        else:
            current = store.version("k")
            if current == 0:
                outcome = Outcome.NO_KEY
            elif current != version:
                outcome = Outcome.MISMATCH
            else:
                store.remove("k")
                outcome = Outcome.OK
            ops.append(Operation.delete(cid, "k", version, outcome, call_s, return_s))
    assert accepted(*ops)
    # A get that reports a value no write ever stored is always caught.
    ops.append(Operation.get("z", "k", ("never written", 1), 100, 101))
    assert not accepted(*ops)
