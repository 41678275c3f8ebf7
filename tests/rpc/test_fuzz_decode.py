"""Fuzzing the input boundary: frames, envelopes, typed messages, Raft validation, a live server.

Everything a remote side sends crosses four layers before it changes state:
the frame decoder (bytes into bodies), the envelope decoder (a body into a
Request/Notify with typed arguments, every field's *type* checked), Raft's
``validate.well_formed`` (every field's *value*), and ``RaftCore.step``. Each
must either accept or refuse with its documented error (ProtocolError, which
closes only the offending connection; ``well_formed`` says False and the core
ignores the message), never raise anything else or leave a state that breaks
the core's invariant. Modest example counts keep CI fast; the ``stress``
variants run the same properties far longer (``make stress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_support import client_of, read_until_closed, serving, wait_until
from tests.raft.harness import Cluster, drain, log_of, make_core

from kvraft.addresses import split_address
from kvraft.errors import ProtocolError
from kvraft.raft.core import RaftCore
from kvraft.raft.messages import (
    MAX_RAFT_INT,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from kvraft.raft.ready import Snapshot
from kvraft.raft.validate import well_formed
from kvraft.rpc.codec import NOTIFY, Notify, decode_envelope, encode_envelope, pack, peer_sender
from kvraft.rpc.framing import HEADER, FrameDecoder, frame
from kvraft.rpc.wire_types import WIRE_TYPES

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(FAST, max_examples=5000)


def _raw(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- frame decoder


def naive_frames(data: bytes, max_frame_bytes: int) -> tuple[list[bytes], bool]:
    """The frame decoder's naive twin: the whole stream at once; (bodies, refused)."""
    bodies, pos = [], 0
    while len(data) - pos >= HEADER.size:
        (length,) = HEADER.unpack_from(data, pos)
        if length > max_frame_bytes:
            return bodies, True
        end = pos + HEADER.size + length
        if end > len(data):
            break
        bodies.append(data[pos + HEADER.size : end])
        pos = end
    return bodies, False


# Mostly streams of small frames (so lengths are often within the limit), plus junk.
streams = st.one_of(
    st.binary(max_size=300),
    st.lists(st.binary(max_size=40).map(frame), max_size=6).map(b"".join),
    st.tuples(st.lists(st.binary(max_size=40).map(frame), max_size=4), st.binary(max_size=12)).map(
        lambda t: b"".join(t[0]) + t[1]
    ),
)


def check_frame_decoder(data: bytes, max_frame_bytes: int, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame_bytes)
    got: list[bytes] = []
    refused = False
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        try:
            got.extend(decoder.feed(data[start:end]))
        except ProtocolError:
            refused = True
            break
    want, want_refused = naive_frames(data, max_frame_bytes)
    assert refused == want_refused
    if refused:
        # The frames completed in the refused piece are not returned: the
        # connection closes there anyway. Nothing else is, nor out of order.
        assert got == want[: len(got)]
    else:
        assert got == want


@FAST
@given(data=streams, max_frame_bytes=st.integers(0, 64), cuts=st.lists(st.integers(0, 400)))
def test_the_frame_decoder_fed_in_any_pieces_agrees_with_its_naive_twin(
    data: bytes, max_frame_bytes: int, cuts: list[int]
) -> None:
    """However the stream is cut, the same bodies come out, in order, and an oversize
    length is refused (ProtocolError, nothing else) exactly when the whole-stream
    parse refuses."""
    check_frame_decoder(data, max_frame_bytes, cuts)


@pytest.mark.stress
@LONG
@given(data=streams, max_frame_bytes=st.integers(0, 64), cuts=st.lists(st.integers(0, 400)))
def test_the_frame_decoder_agrees_with_its_naive_twin_long(
    data: bytes, max_frame_bytes: int, cuts: list[int]
) -> None:
    check_frame_decoder(data, max_frame_bytes, cuts)


# ------------------------------------------------------------------- envelopes

TAGS = [tag for tag, _ in WIRE_TYPES]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)


def _ext(children: st.SearchStrategy[Any]) -> st.SearchStrategy[msgpack.ExtType]:
    """A typed message's ext frame with a known (or unknown) tag and any payload."""
    payload = st.one_of(
        st.lists(children, max_size=10).map(lambda v: _raw(v)), st.binary(max_size=16)
    )
    tag = st.sampled_from(TAGS) | st.integers(0, 127)
    return st.builds(msgpack.ExtType, tag, payload)


wire_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), children, max_size=3),
        _ext(children),
    ),
    max_leaves=25,
)
envelopes = st.one_of(
    st.binary(max_size=200),
    wire_values.map(_raw),
    st.tuples(st.integers(-1, 4), st.lists(wire_values, max_size=5)).map(
        lambda t: _raw([t[0], *t[1]])
    ),
)


def check_envelope(body: bytes) -> None:
    try:
        env = decode_envelope(body)
    except ProtocolError:
        return
    # What decodes is a valid wire value: it encodes again, to what decodes equal.
    assert decode_envelope(encode_envelope(env)) == env


@FAST
@given(body=envelopes)
def test_any_body_decodes_to_an_envelope_or_raises_protocol_error(body: bytes) -> None:
    """Random bytes, random msgpack, and ext frames of every registered tag with random
    payloads: decode_envelope raises nothing but ProtocolError, and what it accepts
    is well-typed all the way down (it re-encodes to an equal envelope)."""
    check_envelope(body)


@pytest.mark.stress
@LONG
@given(body=envelopes)
def test_any_body_decodes_or_raises_protocol_error_long(body: bytes) -> None:
    check_envelope(body)


# --------------------------------------------------------------- Raft messages

PEERS = (1, 2, 3)
EDGES = [0, 1, 2, 3, -1, MAX_RAFT_INT - 1, MAX_RAFT_INT, MAX_RAFT_INT + 1, 2**63 - 1, -(2**63)]
absurd_ints = st.one_of(
    st.sampled_from(EDGES), st.integers(-5, 20), st.integers(-(2**63), 2**64 - 1)
)
# Values near a core's state, seven draws in eight, so that many messages pass
# validation and reach the core's handlers with absurd values in some field.


def mostly(good: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    return st.integers(0, 7).flatmap(lambda k: absurd_ints if k == 0 else good)


ints = mostly(st.integers(0, 8))
src_ids = mostly(st.sampled_from((2, 3)))
dst_ids = mostly(st.just(1))
absurd_bytes = st.one_of(
    st.binary(max_size=16), st.just(b""), st.just(b"\x00" * 70_000), st.just(b"\xff" * 1024)
)
commands = st.none() | absurd_bytes
entries = st.lists(st.builds(Entry, term=ints, index=ints, command=commands), max_size=4).map(tuple)
# Entries that pass validation often enough to reach the log: contiguous after prev.
contiguous = st.tuples(st.integers(0, 6), st.integers(1, 5), st.lists(commands, max_size=4)).map(
    lambda t: (
        t[0],
        tuple(Entry(term=t[1], index=t[0] + 1 + i, command=c) for i, c in enumerate(t[2])),
    )
)

raft_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        RequestVote,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        last_log_index=ints,
        last_log_term=ints,
        pre_vote=st.booleans(),
    ),
    st.builds(
        RequestVoteReply,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        vote_granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    st.builds(
        AppendEntries,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        prev_log_index=ints,
        prev_log_term=ints,
        entries=entries,
        leader_commit=ints,
    ),
    st.builds(
        lambda src, dst, term, prev, commit: AppendEntries(
            src=src,
            dst=dst,
            term=term,
            prev_log_index=prev[0],
            prev_log_term=0 if prev[0] == 0 else 1,
            entries=prev[1],
            leader_commit=commit,
        ),
        src=src_ids,
        dst=dst_ids,
        term=st.integers(1, 6) | absurd_ints,
        prev=contiguous,
        commit=ints,
    ),
    st.builds(
        AppendEntriesReply,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        success=st.booleans(),
        match_index=ints,
        conflict_index=ints,
        conflict_term=ints,
    ),
    st.builds(
        InstallSnapshot,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        last_included_index=ints,
        last_included_term=ints,
        offset=ints,
        data=absurd_bytes,
        done=st.booleans(),
        checksum=ints,
    ),
    st.builds(
        InstallSnapshotReply,
        src=src_ids,
        dst=dst_ids,
        term=ints,
        last_included_index=ints,
        next_offset=ints,
        done=st.booleans(),
    ),
    st.builds(TimeoutNow, src=src_ids, dst=dst_ids, term=ints),
)


def _follower() -> RaftCore:
    return make_core(1, PEERS, term=2, voted_for=2, commit=2, entries=log_of([1, 1, 2, 2]))


def _with_snapshot() -> RaftCore:
    snapshot = Snapshot(index=3, term=1, data=b"state")
    return make_core(1, PEERS, term=2, commit=3, entries=log_of([2, 2], start=4), snapshot=snapshot)


def _leader() -> RaftCore:
    cluster = Cluster.of(3)
    cluster.elect(1)
    cluster.propose(1, b"a", b"b")
    cluster.stabilize()
    return cluster.cores[1]


def _candidate() -> RaftCore:
    core = _follower()
    core.campaign()
    drain(core)
    return core


CORES: dict[str, Callable[[], RaftCore]] = {
    "fresh": lambda: make_core(1, PEERS),
    "follower": _follower,
    "with_snapshot": _with_snapshot,
    "candidate": _candidate,
    "leader": _leader,
}


def check_invariants(core: RaftCore) -> None:
    snapshot_index = core.snapshot.index if core.snapshot is not None else 0
    assert snapshot_index <= core.applying_index <= core.commit_index <= core.last_index, (
        snapshot_index,
        core.applying_index,
        core.commit_index,
        core.last_index,
    )
    assert 0 <= core.current_term <= MAX_RAFT_INT


def check_step(start: str, messages: list[Message]) -> None:
    core = CORES[start]()
    for msg in messages:
        ok = well_formed(msg, core.id)
        assert isinstance(ok, bool)
        term = core.current_term
        core.step(msg)
        if not ok:
            assert core.current_term == term  # an ill-formed message changes nothing
        drain(core)
        check_invariants(core)
        core.tick()
        drain(core)
        check_invariants(core)


@FAST
@given(
    start=st.sampled_from(sorted(CORES)), messages=st.lists(raft_messages, min_size=1, max_size=6)
)
def test_absurd_raft_messages_never_raise_and_keep_the_core_invariant(
    start: str, messages: list[Message]
) -> None:
    """Well-typed messages with absurd values (negative, past 2^62, past 64 bits, huge
    data, wrong addresses) into a follower, a candidate, a leader and a compacted node:
    ``well_formed`` answers a bool, ``step`` never raises, an ill-formed message moves
    no term, and snapshot index <= applying <= commit <= last index holds throughout."""
    check_step(start, messages)


@pytest.mark.stress
@LONG
@given(
    start=st.sampled_from(sorted(CORES)), messages=st.lists(raft_messages, min_size=1, max_size=12)
)
def test_absurd_raft_messages_keep_the_core_invariant_long(
    start: str, messages: list[Message]
) -> None:
    check_step(start, messages)


# Every value one msgpack can carry (its ints are -2^63..2^64-1): the forger's
# encoder must succeed for the receiver's decoder to be what is tested.
wrong_type = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(), st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2).map(tuple),
)  # fmt: skip


@FAST
@given(msg=raft_messages, data=st.data())
def test_a_raft_message_with_a_field_of_the_wrong_type_is_refused_by_the_codec(
    msg: Message, data: st.DataObject
) -> None:
    """Wrong types never reach ``well_formed``: the envelope decoder refuses them.

    The sender's own encoder does not check types, so a peer can put any value in
    any field; the receiver's decoder is where each field's type is enforced."""
    fields = list(type(msg).__dataclass_fields__)
    name = data.draw(st.sampled_from(fields))
    value = data.draw(wrong_type)
    current = getattr(msg, name)
    # bool is its own wire type, and an int field's bool is wrong; skip the type it has.
    if type(value) is type(current) or (name == "entries" and value == ()):
        return
    forged = object.__new__(type(msg))
    for field in fields:
        object.__setattr__(forged, field, value if field == name else getattr(msg, field))
    body = encode_envelope(
        Notify("raft", peer_sender(msg.src if type(msg.src) is int else 1), forged)
    )
    with pytest.raises(ProtocolError, match=r"wrong type|expected"):
        decode_envelope(body)


# ------------------------------------------------------------- a live RpcServer

live_frames = st.one_of(
    envelopes.map(frame),
    # A Raft notify with absurd values, claiming a peer on a connection that is not one.
    raft_messages.map(lambda msg: frame(pack((NOTIFY, "raft", "p2", msg)))),
    st.binary(max_size=64),
)


class Echo:
    """Answers ``echo``; takes notifies; the server under test is the RPC layer."""

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        if method != "echo":
            raise ProtocolError(f"no method {method!r}")
        return args

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        """Ignored, as a server without peers ignores what it cannot use."""


def run_live(batches: Callable[[Callable[[bytes], None]], None]) -> int:
    """Serve, let ``batches`` throw each generated stream at a fresh connection; then echo."""
    count = 0

    async def main() -> None:
        nonlocal count
        async with (
            serving(Echo(), max_frame_bytes=64 * 1024) as (server, _),  # type: ignore[arg-type]
            client_of(server.address) as good,
        ):
            streams: list[bytes] = []
            batches(streams.append)
            for data in streams:
                reader, writer = await asyncio.open_connection(*split_address(server.address))
                writer.write(data)
                with contextlib.suppress(ConnectionError):
                    writer.write_eof()
                await read_until_closed(reader)
                writer.close()
                count += 1
                assert await good.call("echo", count, timeout=5) == count
            await wait_until(lambda: len(server.connections) == 1, what="junk connections gone")
            assert await good.call("echo", ("still", "here"), timeout=5) == ("still", "here")

    asyncio.run(main())
    return count


def _collect(examples: int) -> Callable[[Callable[[bytes], None]], None]:
    def batches(emit: Callable[[bytes], None]) -> None:
        @settings(FAST, max_examples=examples)
        @given(parts=st.lists(live_frames, min_size=1, max_size=5))
        def one(parts: list[bytes]) -> None:
            emit(b"".join(parts))

        one()

    return batches


def test_random_frames_at_a_live_server_never_stop_it_answering_a_good_request() -> None:
    """Random frames (junk, envelopes of every kind, Raft notifies with absurd values,
    claims to be a peer) over fresh connections at an in-process RpcServer: after each,
    and after all, a good request on a long-lived connection is answered."""
    assert run_live(_collect(60)) >= 30


@pytest.mark.stress
def test_random_frames_at_a_live_server_long() -> None:
    assert run_live(_collect(2000)) >= 1000
