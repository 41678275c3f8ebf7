"""Commands in the log: their bytes, and what applying one does to the store."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.errors import NoKey, VersionMismatch
from kvraft.kv_protocol import (
    MAX_IN_FLIGHT_PER_CLIENT,
    MAX_VERSION,
    GetOk,
    GetOp,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    VersionMismatchResult,
)
from kvraft.raft.messages import Entry
from kvraft.rpc import codec
from kvraft.server.commands import BadCommand, apply_command, decode_command, encode_command
from kvraft.server.kvstore import KVStore

ids = st.text(max_size=8)
request_ids = st.integers(0, 2**63 - 1)
windows = st.integers(0, MAX_IN_FLIGHT_PER_CLIENT - 1)
get_ops = st.builds(
    GetOp, key=st.text(), client_id=ids, request_id=request_ids, acked_below=st.just(0)
).flatmap(lambda op: windows.map(lambda w: replace(op, acked_below=max(0, op.request_id - w))))
put_ops = st.builds(
    PutOp,
    key=st.text(),
    value=st.text(),
    version=st.integers(0, MAX_VERSION),
    client_id=ids,
    request_id=request_ids,
    acked_below=st.just(0),
).flatmap(lambda op: windows.map(lambda w: replace(op, acked_below=max(0, op.request_id - w))))


def put(key: str = "k", value: str = "v", version: int = 0, rid: int = 1) -> PutOp:
    return PutOp(
        key=key, value=value, version=version, client_id="c1", request_id=rid, acked_below=rid
    )


def get(key: str = "k", rid: int = 1) -> GetOp:
    return GetOp(key=key, client_id="c1", request_id=rid, acked_below=rid)


def ext(tag: int, fields: list[Any]) -> bytes:
    """A hand-made wire message: what a buggy or hostile encoder could produce."""
    return msgpack.packb(msgpack.ExtType(tag, msgpack.packb(fields)))  # type: ignore[no-any-return]


# ------------------------------------------------------------------- encoding


@given(st.one_of(get_ops, put_ops))
def test_decode_inverts_encode(op: Op) -> None:
    assert decode_command(encode_command(op)) == op


def test_commands_are_also_wire_messages_for_rpc_arguments() -> None:
    op = put()
    assert codec.unpack(codec.pack(op)) == op
    assert encode_command(op) == codec.pack(op)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb(["k"]), "not a command"),
        (msgpack.packb(None), "not a command"),
        (codec.pack(Entry(term=1, index=1, command=b"x")), "not a command"),
        (codec.pack(GetOk("v", 1)), "not a command"),
        (codec.pack((get(),)), "not a command"),
        (encode_command(get()) + b"\x00", "undecodable"),
        (ext(127, []), "unknown message type"),
        (ext(20, [1, "c", 1, 1]), "key"),
        (ext(20, [b"k", "c", 1, 1]), "key"),
        (ext(20, ["k", "c"]), "fields"),
        (ext(20, ["k", "c", 1]), "fields"),  # the layout before sessions
        (ext(20, ["k", "c", 1, 1, 2]), "fields"),
        (ext(20, ["k", "c", -1, 0]), "negative request id"),
        (ext(20, ["k", "c", True, 1]), "request_id"),
        (ext(20, ["k", "c", 1, True]), "acked_below"),
        (ext(20, ["k", "c", 1, -1]), "acked_below must be an int >= 0"),
        (ext(20, ["k", "c", 1, 2]), "acked_below 2 is above request_id 1"),
        (ext(20, ["k", "c", 64, 0]), "at most 64 requests in flight"),
        (ext(21, ["k", "v", 0, "c", 100, 36, 0]), "at most 64 requests in flight"),
        (ext(21, ["k", "v", 0, "c", 1]), "fields"),  # the layout before sessions
        (ext(21, ["k", "v", 0, "c", 1, 1]), "fields"),  # the layout before leases
        (ext(21, ["k", 1, 0, "c", 1, 1, 0]), "value"),
        (ext(21, ["k", "v", True, "c", 1, 1, 0]), "version"),
        (ext(21, ["k", "v", 1.0, "c", 1, 1, 0]), "version"),
        (ext(21, ["k", "v", None, "c", 1, 1, 0]), "version"),
        (ext(21, ["k", "v", -1, "c", 1, 1, 0]), "version -1 out of range"),
        (ext(21, ["k", "v", 2**64 - 1, "c", 1, 1, 0]), "out of range"),
        (ext(21, ["k", "v", 0, 5, 1, 1, 0]), "client_id"),
    ],
)
def test_decode_refuses_anything_but_one_well_formed_command(data: bytes, why: str) -> None:
    with pytest.raises(BadCommand, match=why):
        decode_command(data)


def test_badcommand_is_a_valueerror() -> None:
    assert issubclass(BadCommand, ValueError)


@given(st.binary(max_size=40))
def test_decode_of_arbitrary_bytes_gives_a_command_or_badcommand_never_another_error(
    data: bytes,
) -> None:
    try:
        op = decode_command(data)
    except BadCommand:
        return
    assert type(op) in (GetOp, PutOp)


def test_encode_refuses_what_is_not_a_command() -> None:
    with pytest.raises(TypeError):
        encode_command(GetOk("v", 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------- applying


def test_get_of_a_missing_key_answers_nokey() -> None:
    assert apply_command(KVStore(), get()) == NoKeyResult()


def test_get_answers_value_and_version() -> None:
    store = KVStore()
    store.put("k", "v", 0)
    assert apply_command(store, get()) == GetOk("v", 1)


def test_put_at_version_zero_on_a_missing_key_creates_it() -> None:
    store = KVStore()
    assert apply_command(store, put(version=0)) == PutOk(1, 1)
    assert store.get("k") == ("v", 1)


def test_put_at_a_positive_version_on_a_missing_key_answers_nokey() -> None:
    store = KVStore()
    assert apply_command(store, put(version=2)) == NoKeyResult()
    assert len(store) == 0


def test_put_at_a_wrong_version_answers_mismatch_with_the_current_version() -> None:
    store = KVStore()
    store.put("k", "a", 0)
    store.put("k", "b", 1)
    assert apply_command(store, put(version=0)) == VersionMismatchResult(2)
    assert apply_command(store, put(version=5)) == VersionMismatchResult(2)
    assert store.get("k") == ("b", 2)


@given(st.lists(st.one_of(get_ops, put_ops.map(lambda p: put(p.key[:2], p.value, p.version % 3)))))
def test_apply_command_agrees_with_the_store_api(ops: list[Op]) -> None:
    """apply_command is the store's contract in result form, op by op."""
    store, twin = KVStore(), KVStore()
    for op in ops:
        result = apply_command(store, op)
        try:
            if isinstance(op, GetOp):
                expected: object = GetOk(*twin.get(op.key))
            else:
                expected = PutOk(twin.put(op.key, op.value, op.version), twin.revision)
        except NoKey:
            expected = NoKeyResult()
        except VersionMismatch:
            expected = VersionMismatchResult(twin.version(op.key))
        assert result == expected
    assert store == twin
