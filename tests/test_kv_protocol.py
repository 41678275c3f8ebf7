"""The key-value protocol both ends share: checks of user input, results, limits."""

from __future__ import annotations

import pytest

from kvraft.errors import InvalidArgument, NoKey, ProtocolError, VersionMismatch
from kvraft.kv_protocol import (
    DEFAULT_MAX_KEY_BYTES,
    MAX_CLIENT_ID_BYTES,
    MAX_IN_FLIGHT_PER_CLIENT,
    MAX_REQUEST_ID,
    MAX_VERSION,
    GetOk,
    GetOp,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    SessionExpiredResult,
    StaleRequestResult,
    VersionMismatchResult,
    check_op,
    result_of,
    utf8_len,
)
from kvraft.rpc import codec


def put(key: str = "k", value: str = "v", version: int = 0, rid: int = 1) -> PutOp:
    return PutOp(
        key=key, value=value, version=version, client_id="c1", request_id=rid, acked_below=rid
    )


def get(key: str = "k", rid: int = 1) -> GetOp:
    return GetOp(key=key, client_id="c1", request_id=rid, acked_below=rid)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "op",
    [
        get(),
        get(key=""),
        put(value=""),
        put(version=MAX_VERSION),
        put(key="k" * DEFAULT_MAX_KEY_BYTES),
        put(value="é" * 50),
    ],
)
def test_check_op_accepts_good_input(op: Op) -> None:
    check_op(op, 100)


@pytest.mark.parametrize(
    ("op", "why"),
    [
        (put(version=-1), "version must be in"),
        (put(version=MAX_VERSION + 1), "version must be in"),
        (put(version=True), "version must be int, not bool"),
        (put(version=1.0), "version must be int, not float"),  # type: ignore[arg-type]
        (put(version="1"), "version must be int, not str"),  # type: ignore[arg-type]
        (put(key=b"k"), "key must be str, not bytes"),  # type: ignore[arg-type]
        (get(key=None), "key must be str, not NoneType"),  # type: ignore[arg-type]
        (put(value=3), "value must be str, not int"),  # type: ignore[arg-type]
        (put(value="v" * 101), "value of 101 bytes exceeds the maximum of 100"),
        (put(value="é" * 51), "value of 102 bytes exceeds"),
        (put(key="k" * (DEFAULT_MAX_KEY_BYTES + 1)), "key of 1025 bytes exceeds"),
        (put(value="\ud800"), "value is not encodable as UTF-8"),
        (get(key="\udfff"), "key is not encodable as UTF-8"),
        (put(rid=-1), "request_id"),
        (PutOp("k", "v", 0, 7, 1, 1), "client_id"),  # type: ignore[arg-type]
        (GetOk("v", 1), "not a command"),
        ("k", "not a command"),
        (GetOp("k", "c1", 5, 6), "acked_below 6 is above request_id 5"),
        (GetOp("k", "c1", 5, -1), "acked_below must be an int >= 0"),
        (GetOp("k", "c1", 5, True), "acked_below must be an int"),
        (PutOp("k", "v", 0, "c1", 65, 1), "at most 64 requests in flight"),
    ],
)
def test_check_op_refuses_bad_user_input_with_invalidargument(op: object, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        check_op(op, 100)


def test_check_op_accepts_the_in_flight_window_at_its_bound() -> None:
    """64 ids open at once (request_id - acked_below = 63) is allowed; 64 is one past."""
    check_op(PutOp("k", "v", 0, "c1", MAX_IN_FLIGHT_PER_CLIENT, 1))
    with pytest.raises(InvalidArgument):
        check_op(PutOp("k", "v", 0, "c1", MAX_IN_FLIGHT_PER_CLIENT + 1, 1))


def test_check_op_key_limit_is_a_parameter() -> None:
    check_op(get(key="abcd"), max_key_bytes=4)
    with pytest.raises(InvalidArgument):
        check_op(get(key="abcde"), max_key_bytes=4)


# -------------------------------------------------------------------- results


def test_results_travel_on_the_wire_as_themselves() -> None:
    for result in [
        GetOk("v", 3),
        PutOk(4),
        NoKeyResult(),
        VersionMismatchResult(9),
        StaleRequestResult(),
        SessionExpiredResult(),
    ]:
        assert codec.unpack(codec.pack(result)) == result


def test_result_of_turns_results_into_return_values() -> None:
    assert result_of(GetOk("v", 3)) == ("v", 3)
    assert result_of(PutOk(4)) == (None, 4)


def test_result_of_raises_the_user_facing_errors() -> None:
    with pytest.raises(NoKey):
        result_of(NoKeyResult())
    with pytest.raises(VersionMismatch, match="version 9"):
        result_of(VersionMismatchResult(9))


@pytest.mark.parametrize(
    "junk", [None, ("ok", "v", 1), 3, get(), StaleRequestResult(), SessionExpiredResult()]
)
def test_result_of_blames_the_server_for_anything_else(junk: object) -> None:
    with pytest.raises(ProtocolError):
        result_of(junk)


def test_utf8_len_matches_encoding() -> None:
    for text in ["", "abc", "é", "€uro", "🙂"]:
        assert utf8_len(text) == len(text.encode())


def test_client_id_of_64_bytes_is_accepted_and_65_refused() -> None:
    """The bound is in UTF-8 bytes: 64 ASCII, or 32 two-byte characters, pass; one more fails."""
    check_op(GetOp(key="k", client_id="c" * MAX_CLIENT_ID_BYTES, request_id=1, acked_below=1))
    check_op(
        GetOp(key="k", client_id="é" * (MAX_CLIENT_ID_BYTES // 2), request_id=1, acked_below=1)
    )
    with pytest.raises(InvalidArgument, match="client_id of 65 bytes exceeds the maximum of 64"):
        check_op(
            GetOp(key="k", client_id="c" * (MAX_CLIENT_ID_BYTES + 1), request_id=1, acked_below=1)
        )
    with pytest.raises(InvalidArgument, match="client_id of 66 bytes"):
        check_op(GetOp(key="k", client_id="é" * 33, request_id=1, acked_below=1))


def test_request_id_bound_is_2_to_the_63_minus_1() -> None:
    """Request ids are stored as signed 64-bit integers: the largest passes, one more fails."""
    assert MAX_REQUEST_ID == 2**63 - 1
    check_op(put(rid=0))
    check_op(put(rid=MAX_REQUEST_ID))
    with pytest.raises(InvalidArgument, match=r"request_id must be an int in 0\.\."):
        check_op(put(rid=MAX_REQUEST_ID + 1))
    with pytest.raises(InvalidArgument, match="request_id"):
        check_op(put(rid=True))  # type: ignore[arg-type]
