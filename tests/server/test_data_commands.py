"""Applying the data API's commands: revisions, deletes, ranges and their byte budget, transactions.

The semantics in full are checked against a model in test_data_model_stateful.py;
here, the named cases and every bound at its limit and one past.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.kv_protocol import (
    MAX_RANGE_REPLY_BYTES,
    MAX_TXN_READ_BYTES,
    RANGE_KEY_OVERHEAD_BYTES,
    Compare,
    DeleteOk,
    DeleteOp,
    DeleteRangeOp,
    GetOp,
    NoKeyResult,
    PutOp,
    RangeOp,
    RangeResult,
    SetOk,
    SetOp,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnOp,
    TxnOpFailedResult,
    TxnPut,
    TxnRange,
    TxnResult,
    TxnSet,
    VersionMismatchResult,
)
from kvraft.rpc.codec import pack
from kvraft.server.commands import BadCommand, apply_command, decode_command, encode_command
from kvraft.server.kvstore import KVStore
from kvraft.server.sessions import Sessions

S = ("c", 1, 0)


def run(store: KVStore, op: object) -> object:
    return apply_command(store, op)  # type: ignore[arg-type]


def rng(store: KVStore, start: str = "", end: str = "", limit: int = 0) -> RangeResult:
    result = run(store, RangeOp(start, end, limit, False, *S))
    assert isinstance(result, RangeResult)
    return result


def test_revisions_and_key_metadata() -> None:
    store = KVStore()
    assert run(store, SetOp("a", "1", *S)) == SetOk(1, 1)
    assert run(store, PutOp("b", "1", 0, *S)).revision == 2  # type: ignore[attr-defined]
    assert run(store, SetOp("a", "2", *S)) == SetOk(2, 3)
    assert run(store, PutOp("a", "x", 1, *S)) == VersionMismatchResult(2)  # no revision
    assert run(store, GetOp("a", *S)) is not None and store.revision == 3
    kvs = rng(store).kvs
    assert [(kv.key, kv.version, kv.create_revision, kv.mod_revision) for kv in kvs] == [
        ("a", 2, 1, 3),
        ("b", 1, 2, 2),
    ]
    assert rng(store).revision == 3


def test_delete_at_a_version_and_recreate() -> None:
    store = KVStore()
    run(store, SetOp("a", "1", *S))
    assert run(store, DeleteOp("a", 0, *S)) == VersionMismatchResult(1)
    assert run(store, DeleteOp("a", 2, *S)) == VersionMismatchResult(1)
    assert run(store, DeleteOp("b", 0, *S)) == NoKeyResult()
    assert run(store, DeleteOp("a", 1, *S)) == DeleteOk(1, 2)
    assert run(store, GetOp("a", *S)) == NoKeyResult() and store.version("a") == 0
    assert run(store, PutOp("a", "again", 0, *S)).version == 1  # type: ignore[attr-defined]
    assert store.entry("a") == ("again", 1, 3, 3, 0)  # a new life: a new create revision


def test_delete_range_counts_and_advances_once_or_not_at_all() -> None:
    store = KVStore()
    for key in ("a", "ab", "b"):
        run(store, SetOp(key, "v", *S))
    assert run(store, DeleteRangeOp("z", "", *S)) == DeleteOk(0, 3)
    assert run(store, DeleteRangeOp("a", "b", *S)) == DeleteOk(2, 4)
    assert list(store) == ["b"] and store.data_bytes() == 2


def test_range_limit_more_and_pagination() -> None:
    store = KVStore()
    for i in range(5):
        run(store, SetOp(f"k{i}", "v", *S))
    first = rng(store, "k", "l", limit=2)
    assert [kv.key for kv in first.kvs] == ["k0", "k1"] and first.more
    rest = rng(store, first.kvs[-1].key + "\0", "l", limit=3)
    assert [kv.key for kv in rest.kvs] == ["k2", "k3", "k4"] and not rest.more
    assert not rng(store, "k", "l", limit=5).more
    assert rng(store, "k", "l", limit=4).more


def _store_with(sizes: list[int]) -> KVStore:
    """Keys k0, k1, ... whose values make each take ``size`` bytes of a reply."""
    store = KVStore()
    for i, size in enumerate(sizes):
        key = f"k{i}"
        store.write(key, "v" * (size - len(key) - RANGE_KEY_OVERHEAD_BYTES), i + 1)
    store.set_revision(len(sizes))
    return store


def test_range_reply_bytes_at_the_budget_and_one_past() -> None:
    half = MAX_RANGE_REPLY_BYTES // 2
    exact = _store_with([half, half, 100])
    assert len(rng(exact).kvs) == 2 and rng(exact).more
    over = _store_with([half, half + 1])
    assert len(rng(over).kvs) == 1 and rng(over).more


def test_a_range_returns_one_key_larger_than_the_budget() -> None:
    store = _store_with([MAX_RANGE_REPLY_BYTES + 10, 100])
    result = rng(store)
    assert len(result.kvs) == 1 and result.more


def test_txn_reads_share_a_budget_they_never_exceed() -> None:
    store = _store_with([MAX_TXN_READ_BYTES // 2, MAX_TXN_READ_BYTES // 2, 100])
    result = run(store, TxnOp((), (TxnRange("k", ""),), (), *S))
    assert isinstance(result, TxnResult)
    (read,) = result.responses
    assert isinstance(read, RangeResult) and len(read.kvs) == 2 and read.more
    # one past: a get of a key that does not fit the rest of the budget is empty, with more
    store = _store_with([MAX_TXN_READ_BYTES // 2, MAX_TXN_READ_BYTES // 2 + 1])
    result = run(store, TxnOp((), (TxnGet("k0"), TxnGet("k1")), (), *S))
    assert isinstance(result, TxnResult)
    first, second = result.responses
    assert isinstance(first, RangeResult) and len(first.kvs) == 1
    assert isinstance(second, RangeResult) and second.kvs == () and second.more


def test_txn_branches_atomicity_and_one_revision() -> None:
    store = KVStore()
    run(store, SetOp("a", "1", *S))
    cas = TxnOp(
        (Compare("a", "value", "==", "1"),),
        (TxnPut("a", "2", 1), TxnSet("b", "x"), TxnGet("b")),
        (TxnGet("a"),),
        *S,
    )
    result = run(store, cas)
    assert isinstance(result, TxnResult) and result.succeeded and result.revision == 2
    assert store.entry("a") == ("2", 2, 1, 2, 0) and store.entry("b") == ("x", 1, 2, 2, 0)
    read = result.responses[2]
    assert isinstance(read, RangeResult) and read.kvs[0].value == "x" and read.revision == 2
    again = run(store, cas)  # the compare fails now: the failure branch reads
    assert isinstance(again, TxnResult) and not again.succeeded and again.revision == 2
    # a versioned op that fails: nothing applies, not even the set before it
    bad = TxnOp((), (TxnSet("c", "1"), TxnPut("a", "3", 1), TxnDelete("zz", 0)), (), *S)
    assert run(store, bad) == TxnOpFailedResult(True, 1, 2)
    assert "c" not in store and store.revision == 2
    gone = TxnOp((), (TxnDelete("zz", 0),), (), *S)
    assert run(store, gone) == TxnOpFailedResult(True, 0, 0)  # NoKey
    assert run(store, TxnOp((), (TxnDelete("zz"),), (), *S)) == TxnResult(
        True, (DeleteOk(0, 2),), 2
    )


@pytest.mark.parametrize(
    "op",
    [
        RangeOp("b", "a", 0, False, *S),
        RangeOp("a", "", -1, False, *S),
        DeleteRangeOp("b", "a", *S),
        DeleteOp("a", -1, *S),
        TxnOp((), (TxnSet("a", "1"), TxnSet("a", "2")), (), *S),
        TxnOp((Compare("a", "colour", "==", 0),), (), (), *S),
        TxnOp((), tuple(TxnGet("a") for _ in range(129)), (), *S),
    ],
)
def test_decode_command_refuses_what_no_replica_may_apply(op: object) -> None:
    with pytest.raises(BadCommand):
        decode_command(pack(op))


def test_every_new_command_round_trips_through_the_log() -> None:
    for op in (
        SetOp("a", "1", *S),
        DeleteOp("a", 1, *S),
        DeleteRangeOp("a", "b", *S),
        RangeOp("a", "", 3, True, *S),
        TxnOp((Compare("a", "exists", "==", False),), (TxnSet("a", "1"),), (TxnGet("a"),), *S),
    ):
        assert decode_command(encode_command(op)) == op  # type: ignore[arg-type]


def test_a_resent_txn_gets_its_first_result_and_applies_once() -> None:
    sessions, store = Sessions(), KVStore()
    op = TxnOp((), (TxnSet("n", "x"),), (), "c", 1, 1)
    first = sessions.apply(store, op, 1)
    assert sessions.apply(store, op, 2) == first and store.entry("n") == ("x", 1, 1, 1, 0)
    read = RangeOp("", "", 0, False, "c", 2, 1)
    sessions.apply(store, read, 3)
    assert sessions.results_held() == 1  # ranges keep nothing


# ------------------------------------------------------------------ fuzzing

absurd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2, -1, 2**63 - 1]),
    st.text(max_size=3),
    st.sampled_from(["", "a", "b", "version", "value", "exists", "mod_revision", "==", "<"]),
    st.binary(max_size=3),
)
small_keys = st.sampled_from(["", "a", "ab", "b"]) | absurd
parts = st.one_of(
    st.builds(Compare, small_keys, absurd, absurd, absurd),
    st.builds(TxnPut, small_keys, absurd, absurd),
    st.builds(TxnSet, small_keys, absurd),
    st.builds(TxnDelete, small_keys, absurd),
    st.builds(TxnDeleteRange, small_keys, small_keys),
    st.builds(TxnGet, small_keys),
    st.builds(TxnRange, small_keys, small_keys, absurd, absurd),
    absurd,
)
session = st.tuples(st.just("c"), st.integers(0, 3), st.integers(0, 3))
hostile = st.one_of(
    st.builds(lambda k, v, s: SetOp(k, v, *s), small_keys, absurd, session),
    st.builds(lambda k, n, s: DeleteOp(k, n, *s), small_keys, absurd, session),
    st.builds(lambda a, b, s: DeleteRangeOp(a, b, *s), small_keys, small_keys, session),
    st.builds(
        lambda a, b, n, ko, s: RangeOp(a, b, n, ko, *s),
        small_keys,
        small_keys,
        absurd,
        absurd,
        session,
    ),
    st.builds(
        lambda c, ok, ko, s: TxnOp(tuple(c), tuple(ok), tuple(ko), *s),
        st.lists(parts, max_size=3),
        st.lists(parts, max_size=4),
        st.lists(parts, max_size=3),
        session,
    ),
)


@settings(max_examples=400, deadline=None)
@given(op=hostile)
def test_hostile_new_commands_decode_strictly_and_what_decodes_applies_deterministically(
    op: object,
) -> None:
    """Every field of every new command with any value: decode_command refuses
    (BadCommand, nothing else) or gives a command that applies without error,
    the same on two replicas."""
    try:
        decoded = decode_command(pack(op))
    except BadCommand:
        return
    a, b = KVStore(), KVStore()
    for store in (a, b):
        for key in ("a", "ab", "b"):
            store.write(key, "v", 1)
        store.set_revision(1)
    assert apply_command(a, decoded) == apply_command(b, decoded)
    assert a == b and a.snapshot() == b.snapshot()
