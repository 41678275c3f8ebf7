"""The codec: envelopes and typed messages round-trip; anything else is a ProtocolError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.errors import ProtocolError
from kvraft.raft.messages import AppendEntries, Entry, RequestVote
from kvraft.rpc.codec import (
    MAX_NESTING,
    NOTIFY,
    REPLY,
    REQUEST,
    Head,
    Notify,
    Reply,
    Request,
    WireSchemaError,
    check,
    client_sender,
    decode_envelope,
    encode_envelope,
    pack,
    peer_sender,
    read_head,
    reply_id_of_head,
    sender_peer_id,
    unpack,
    wire_message,
)
from kvraft.rpc.framing import OVERSIZE_HEAD_BYTES

# Tags 100+ are free for tests (Raft reserves 1..19).


@wire_message(100)
@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float
    label: str | None


@wire_message(101)
@dataclass(frozen=True, slots=True)
class Shape:
    points: tuple[Point, ...]
    pair: tuple[int, str]
    tags: dict[str, int]
    by_id: dict[int, bytes]
    closed: bool


@wire_message(102)
@dataclass(frozen=True, slots=True)
class Box:
    inner: Any


def test_envelopes_round_trip() -> None:
    envelopes: list[Request | Reply | Notify] = [
        Request(1, "get", client_sender("ab12"), ("k",)),
        Request(2**63 - 1, "put", peer_sender(4), {"k": "v", "n": None}),
        Reply(7, None, ("value", 3)),
        Reply(8, ("NoKey", "no key 'k'"), None),
        Notify("raft", peer_sender(0), b"\x00\xff"),
    ]
    for env in envelopes:
        assert decode_envelope(encode_envelope(env)) == env


def test_registered_messages_round_trip_with_nested_tuples_of_messages() -> None:
    shape = Shape(
        points=(Point(1, 2.5, "a"), Point(-3, 4, None)),
        pair=(9, "nine"),
        tags={"red": 1},
        by_id={1: b"one", 2: b""},
        closed=True,
    )
    assert unpack(pack(shape)) == shape
    env = Request(5, "draw", peer_sender(1), (shape, [Point(0, 0.0, None)]))
    decoded = decode_envelope(encode_envelope(env))
    assert isinstance(decoded, Request)
    assert decoded.args == (shape, (Point(0, 0.0, None),))  # lists come back as tuples


def test_raft_messages_round_trip() -> None:
    msg = AppendEntries(
        src=1,
        dst=2,
        term=3,
        prev_log_index=4,
        prev_log_term=5,
        entries=(Entry(term=3, index=5, command=b"cmd"), Entry(term=3, index=6, command=None)),
        leader_commit=4,
    )
    assert unpack(pack(msg)) == msg
    vote = RequestVote(src=0, dst=1, term=7, last_log_index=10, last_log_term=6, pre_vote=True)
    assert unpack(pack(vote)) == vote


def _ext(tag: int, fields: list[Any]) -> msgpack.ExtType:
    return msgpack.ExtType(tag, msgpack.packb(fields, use_bin_type=True))


def _raw(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ([1, 2.0], "expected 3 fields"),
        ([1, 2.0, None, "extra"], "expected 3 fields"),
        (["1", 2.0, None], r"Point\.x: wrong type str"),
        ([1.0, 2.0, None], r"Point\.x: wrong type float"),
        ([1, "2", None], r"Point\.y: wrong type str"),
        ([1, 2.0, 7], r"Point\.label: wrong type int"),
        ([1, 2.0, b"bytes"], r"Point\.label: wrong type bytes"),
    ],
)
def test_wrong_field_count_or_type_is_a_protocol_error(fields: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack(_raw(_ext(100, fields)))


def test_bool_is_not_int() -> None:
    with pytest.raises(ProtocolError, match=r"Point\.x: wrong type bool"):
        unpack(_raw(_ext(100, [True, 1.0, None])))
    with pytest.raises(ProtocolError, match=r"RequestVote\.term: wrong type bool"):
        unpack(_raw(_ext(2, [0, 1, True, 10, 6, False])))
    with pytest.raises(ProtocolError):
        check(True, int, "arg")
    with pytest.raises(ProtocolError):
        check(1, bool, "arg")
    check(1, float, "arg")  # an int is a fine float


def test_wrong_types_deep_inside_nested_messages_are_caught() -> None:
    bad_point = _ext(100, ["x", 1.0, None])
    with pytest.raises(ProtocolError, match=r"Point\.x"):
        unpack(_raw(_ext(101, [[bad_point], [1, "a"], {}, {}, False])))
    with pytest.raises(ProtocolError, match=r"Shape\.pair"):
        unpack(_raw(_ext(101, [[], [1, 2], {}, {}, False])))
    with pytest.raises(ProtocolError, match=r"Shape\.tags"):
        unpack(_raw(_ext(101, [[], [1, "a"], {"k": "v"}, {}, False])))
    with pytest.raises(ProtocolError, match=r"Shape\.points"):
        unpack(_raw(_ext(101, [[(1, 2)], [1, "a"], {}, {}, False])))


def test_unknown_ext_tag_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 97"):
        unpack(_raw(msgpack.ExtType(97, b"\x90")))


def test_messages_nested_too_deep_are_refused_without_crashing() -> None:
    # Unbounded nesting used to recurse on the C stack and segfault the process.
    body = _raw(1)
    for _ in range(MAX_NESTING):
        body = _raw(msgpack.ExtType(102, _raw([msgpack.ExtType(102, body)])))
    with pytest.raises(ProtocolError, match="nested more than"):
        unpack(body)
    hostile = _raw(None)
    for _ in range(5000):
        hostile = _raw([msgpack.ExtType(102, hostile)])
    with pytest.raises(ProtocolError):
        unpack(hostile)


def test_nesting_up_to_the_limit_is_fine() -> None:
    value: Any = "core"
    for _ in range(MAX_NESTING):
        value = Box(value)
    assert unpack(pack(value)) == value


@pytest.mark.parametrize(
    "junk",
    [b"", b"\xc1", b"\x92\x01", b"\xa3ab", _raw(1) + b"extra", b"\xa2\xff\xfe", b"\x81\x80\x01"],
)
def test_not_msgpack_is_a_protocol_error(junk: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(junk)
    with pytest.raises(ProtocolError):
        decode_envelope(junk)


@pytest.mark.parametrize(
    "value",
    [
        5,
        "request",
        [],
        {"kind": 0},
        [3, 1, "m", "s", None],  # unknown kind
        [0, 1, "m", "s"],  # request missing args
        [0, 1, "m", "s", None, "extra"],
        [0, "1", "m", "s", None],  # request id not an int
        [0, True, "m", "s", None],  # bool is not int
        [0, 1, 5, "s", None],  # method not a str
        [0, 1, "m", b"s", None],  # sender bytes, not str
        [1, 1, "oops", None],  # error not [code, message]
        [1, 1, ["code"], None],
        [1, 1, ["code", 5], None],
        [2, "m", None, None],
        [True, 1, None, None],  # kind True would equal REPLY
        [0.0, 1, "m", "s", None],  # kind 0.0 would equal REQUEST
    ],
)
def test_valid_msgpack_that_is_not_an_envelope_is_a_protocol_error(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_envelope(_raw(value))


def test_unregistered_objects_cannot_be_encoded() -> None:
    with pytest.raises(TypeError, match="cannot encode object"):
        pack(object())


def test_unsupported_annotation_fails_at_registration() -> None:
    with pytest.raises(WireSchemaError, match="unsupported annotation"):

        @wire_message(103)
        @dataclass(frozen=True)
        class Bad:
            items: list[int]

    with pytest.raises(ProtocolError, match="unknown message type 103"):
        unpack(_raw(msgpack.ExtType(103, _raw([[1]]))))  # the refused class is not registered


def test_sender_identities() -> None:
    assert sender_peer_id(peer_sender(0)) == 0
    assert sender_peer_id(peer_sender(12)) == 12
    for junk in [
        "",
        "p",
        "c12",
        client_sender("7"),
        "p-1",
        "p1.5",
        "p\u00b2",
        "p\u0661",
        "p01",
        " p1",
    ]:
        assert sender_peer_id(junk) is None, junk


def test_reply_id_of_head() -> None:
    body = encode_envelope(Reply(123456789012, None, b"x" * 1000))
    assert reply_id_of_head(body[:16]) == 123456789012
    with pytest.raises(ProtocolError):
        reply_id_of_head(encode_envelope(Request(5, "m", "s", None))[:16])
    with pytest.raises(ProtocolError):
        reply_id_of_head(b"\xc1" * 16)


wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(-1000, 1000), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(rid=st.integers(min_value=0, max_value=2**64 - 1), args=wire_values)
def test_any_plain_value_round_trips_as_request_args(rid: int, args: Any) -> None:
    env = Request(rid, "m", "s", args)
    assert decode_envelope(encode_envelope(env)) == env


# ------------------------------------------------------------------------ heads


@given(
    rid=st.integers(0, 2**64 - 1),
    method=st.text(),
    sender=st.text(),
    args=wire_values,
    tag=st.integers(0, 127),
)
def test_read_head_reads_what_encode_envelope_wrote(
    rid: int, method: str, sender: str, args: Any, tag: int
) -> None:
    """The header reader agrees with ``encode_envelope`` for every envelope kind."""
    assert read_head(encode_envelope(Request(rid, method, sender, args))) == Head(
        REQUEST, rid, method, sender
    )
    assert read_head(encode_envelope(Reply(rid, None, args))) == Head(REPLY, rid)
    assert read_head(encode_envelope(Reply(rid, ("NoKey", "k"), None))) == Head(REPLY, rid)
    assert read_head(encode_envelope(Notify(method, sender, args))) == Head(
        NOTIFY, None, method, sender
    )
    typed = msgpack.ExtType(tag, msgpack.packb(args))
    assert read_head(encode_envelope(Notify(method, sender, typed))) == Head(
        NOTIFY, None, method, sender, tag
    )
    assert read_head(encode_envelope(Request(rid, method, sender, typed))) == Head(
        REQUEST, rid, method, sender, tag
    )


def test_read_head_gives_the_tag_of_a_registered_message() -> None:
    vote = RequestVote(src=1, dst=2, term=3, last_log_index=4, last_log_term=5, pre_vote=False)
    body = encode_envelope(Notify("raft", "p1", vote))
    assert read_head(body) == Head(NOTIFY, None, "raft", "p1", 2)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 65535, 65536])
def test_read_head_finds_the_tag_of_every_extension_format(size: int) -> None:
    """fixext 1-16 and ext 8/16/32 all keep their type code in a different place."""
    for tag in (0, 19, 127):
        body = encode_envelope(Notify("raft", "p1", msgpack.ExtType(tag, b"\x07" * size)))
        assert read_head(body) == Head(NOTIFY, None, "raft", "p1", tag)


@given(st.binary(max_size=64))
def test_read_head_of_junk_is_none_or_what_decode_envelope_sees(junk: bytes) -> None:
    """Bytes that are not an envelope give None, never an exception.

    Random bytes can, rarely, be a valid envelope; then the head is that envelope's.
    """
    head = read_head(junk)
    try:
        env = decode_envelope(junk)
    except ProtocolError:
        return
    assert head is not None
    if isinstance(env, Reply):
        assert head == Head(REPLY, env.request_id)
    elif isinstance(env, Request):
        assert head == Head(REQUEST, env.request_id, env.method, env.sender, head.tag)
    else:
        assert (head.kind, head.method, head.sender) == (NOTIFY, env.method, env.sender)


def test_read_head_refuses_malformed_envelopes() -> None:
    for value in (
        [0, 1, "m"],
        [0, "1", "m", "s", None],
        [1, 2],
        [3, 1, "m", "s"],
        [True, 1, None, None],
        [],
        {"a": 1},
        7,
    ):
        assert read_head(msgpack.packb(value)) is None, value


def test_read_head_of_a_reply_needs_only_its_first_bytes() -> None:
    body = encode_envelope(Reply(2**64 - 1, None, b"x" * 1000))
    assert read_head(body[:OVERSIZE_HEAD_BYTES]) == Head(REPLY, 2**64 - 1)
