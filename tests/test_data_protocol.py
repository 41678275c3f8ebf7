"""The data API's protocol rules: check_op's bounds (at the limit and one past), txn rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.errors import InvalidArgument
from kvraft.kv_protocol import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    MAX_RANGE_LIMIT,
    MAX_REVISION,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    MAX_VERSION,
    RANGE_BOUND_EXTRA_BYTES,
    TXN_ITEM_OVERHEAD_BYTES,
    Compare,
    DeleteOp,
    DeleteRangeOp,
    RangeOp,
    SetOp,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnOp,
    TxnPut,
    TxnRange,
    TxnSet,
    check_op,
    prefix_end,
    txn_error,
)

S = ("c", 1, 0)  # client_id, request_id, acked_below


def txn(compare: Any = (), success: Any = (), failure: Any = ()) -> TxnOp:
    return TxnOp(tuple(compare), tuple(success), tuple(failure), *S)


def test_new_commands_check_keys_values_and_versions() -> None:
    check_op(SetOp("k", "v" * DEFAULT_MAX_VALUE_BYTES, *S))
    with pytest.raises(InvalidArgument, match="value"):
        check_op(SetOp("k", "v" * (DEFAULT_MAX_VALUE_BYTES + 1), *S))
    with pytest.raises(InvalidArgument, match="key"):
        check_op(SetOp("k" * (DEFAULT_MAX_KEY_BYTES + 1), "v", *S))
    check_op(DeleteOp("k", MAX_VERSION, *S))
    for bad in (-1, MAX_VERSION + 1, True, "1"):
        with pytest.raises(InvalidArgument, match="version"):
            check_op(DeleteOp("k", bad, *S))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="surrogate"):
        check_op(SetOp("\ud800", "v", *S))


def test_range_bounds_limit_and_order() -> None:
    longest = "k" * (DEFAULT_MAX_KEY_BYTES + RANGE_BOUND_EXTRA_BYTES)
    check_op(RangeOp(longest, "", MAX_RANGE_LIMIT, False, *S))
    check_op(DeleteRangeOp("", longest, *S))
    with pytest.raises(InvalidArgument, match="start"):
        check_op(RangeOp(longest + "k", "", 0, False, *S))
    with pytest.raises(InvalidArgument, match="limit"):
        check_op(RangeOp("a", "", MAX_RANGE_LIMIT + 1, False, *S))
    with pytest.raises(InvalidArgument, match="limit"):
        check_op(RangeOp("a", "", -1, False, *S))
    with pytest.raises(InvalidArgument, match="before its start"):
        check_op(RangeOp("b", "a", 0, False, *S))
    with pytest.raises(InvalidArgument, match="before its start"):
        check_op(DeleteRangeOp("b", "a", *S))
    with pytest.raises(InvalidArgument, match="keys_only"):
        check_op(RangeOp("a", "", 0, 1, *S))  # type: ignore[arg-type]
    check_op(RangeOp("a", "a", 0, False, *S))  # empty, but well-formed


def test_txn_counts_at_the_limit_and_one_past() -> None:
    compares = [Compare(f"k{i}", "version", "==", 0) for i in range(MAX_TXN_COMPARES)]
    ops = [TxnSet(f"k{i}", "") for i in range(MAX_TXN_OPS)]
    check_op(txn(compares, ops, ops))
    with pytest.raises(InvalidArgument, match="compares"):
        check_op(txn([*compares, compares[0]]))
    with pytest.raises(InvalidArgument, match="success operations"):
        check_op(txn(success=[*ops, TxnGet("x")]))
    with pytest.raises(InvalidArgument, match="failure operations"):
        check_op(txn(failure=[*ops, TxnGet("x")]))


def test_txn_size_within_the_value_limit_counting_overhead_per_item() -> None:
    overhead = 2 * TXN_ITEM_OVERHEAD_BYTES + 2  # two items, keys "a" and "b"
    fits = DEFAULT_MAX_VALUE_BYTES - overhead
    check_op(txn(success=[TxnSet("a", "v" * fits), TxnGet("b")]))
    with pytest.raises(InvalidArgument, match="transaction of"):
        check_op(txn(success=[TxnSet("a", "v" * (fits + 1)), TxnGet("b")]))
    with pytest.raises(InvalidArgument, match="key"):
        check_op(txn(success=[TxnGet("k" * (DEFAULT_MAX_KEY_BYTES + 1))]))


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (Compare("k", "size", "==", 0), "target"),
        (Compare("k", "version", "<=", 0), "op"),
        (Compare("k", "version", "==", "0"), "int"),
        (Compare("k", "version", "==", True), "int"),
        (Compare("k", "mod_revision", "==", -1), "int"),
        (Compare("k", "mod_revision", "==", MAX_REVISION + 1), "int"),
        (Compare("k", "value", "==", 1), "str"),
        (Compare("k", "exists", "==", 1), "bool"),
        (Compare("k", "exists", "<", True), "== or !="),
        (Compare(1, "version", "==", 0), "key"),  # type: ignore[arg-type]
        (TxnGet("k"), "not a Compare"),
    ],
)
def test_bad_compares_are_refused(item: Any, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        check_op(txn([item]))


@pytest.mark.parametrize(
    ("branch", "why"),
    [
        ([TxnSet("a", "1"), TxnPut("a", "2", 0)], "written twice"),
        ([TxnDelete("a"), TxnSet("a", "1")], "written twice"),
        ([TxnDeleteRange.prefix("a"), TxnSet("ab", "1")], "written twice"),
        ([TxnSet("ab", "1"), TxnDeleteRange.prefix("a")], "overlaps"),
        ([TxnDeleteRange("a", "c"), TxnDeleteRange("b", "d")], "overlaps"),
        ([TxnDeleteRange("a", ""), TxnDeleteRange("z", "")], "overlaps"),
        ([TxnPut("a", "1", -1)], "version"),
        ([TxnPut("a", "1", None)], "version"),  # type: ignore[arg-type]
        ([TxnDelete("a", MAX_VERSION + 1)], "version"),
        ([TxnSet("a", 1)], "value"),  # type: ignore[arg-type]
        ([TxnRange("b", "a")], "before start"),
        ([TxnRange("a", "", -1)], "limit"),
        ([TxnRange("a", "", 0, None)], "keys_only"),  # type: ignore[arg-type]
        ([Compare("a", "exists", "==", True)], "not a txn operation"),
    ],
)
def test_bad_branches_are_refused_by_the_shared_rule(branch: list[Any], why: str) -> None:
    op = txn(success=branch)
    assert txn_error(op) is not None
    with pytest.raises(InvalidArgument, match=why):
        check_op(op)
    assert txn_error(txn(failure=branch)) is not None


def test_reads_of_written_keys_and_writes_in_both_branches_are_fine() -> None:
    same = [TxnSet("a", "1"), TxnGet("a"), TxnRange.prefix("a"), TxnDeleteRange("b", "c")]
    check_op(txn([Compare("a", "exists", "!=", True)], same, same))
    check_op(txn(success=[TxnDeleteRange("a", "b"), TxnDeleteRange("b", "c")]))  # adjacent


def test_prefix_end_examples() -> None:
    assert prefix_end("a") == "b"
    assert prefix_end("user/") == "user0"
    assert prefix_end("") == ""
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") == ""
    assert prefix_end("\ud7ff") == "\ue000"  # skips the surrogates keys cannot hold


keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)


@given(keys, keys)
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: str, key: str) -> None:
    end = prefix_end(prefix)
    inside = key >= prefix and (end == "" or key < end)
    assert inside == key.startswith(prefix)
    end.encode("utf-8")  # never a lone surrogate
