"""Raft's batches and snapshot chunks are sized from --max-frame-bytes, and a message that
still does not fit is logged and dropped by the transport, never raised into the Ready loop.

Reference: issue 11 item 3 (message batches and chunks sized from the frame limit)
"""

from __future__ import annotations

import logging

import pytest

from kvraft.kv_protocol import MAX_CLIENT_ID_BYTES, MAX_REQUEST_ID, MAX_VERSION, PutOp
from kvraft.raft.log import RaftLog
from kvraft.raft.messages import MAX_RAFT_INT, AppendEntries, Entry, InstallSnapshot
from kvraft.rpc.codec import Notify, encode_envelope, peer_sender
from kvraft.server import state_snapshot
from kvraft.server.commands import encode_command
from kvraft.server.kvstore import KVStore
from kvraft.server.options import raft_message_limits
from kvraft.server.peer_transport import RAFT_METHOD, RpcPeerTransport
from kvraft.server.process import snapshot_decodes
from kvraft.server.sessions import SessionLimits, Sessions

FRAMES = [4097, 8192, 65536, 1 << 20, 16 << 20]


def frame_of(message: object) -> int:
    """The body size of ``message`` sent by peer 2: what the frame limit bounds."""
    return len(encode_envelope(Notify(RAFT_METHOD, peer_sender(2), message)))


def worst_append(entries: tuple[Entry, ...]) -> AppendEntries:
    """An AppendEntries whose every int takes msgpack's widest encoding."""
    return AppendEntries(
        src=2,
        dst=1,
        term=MAX_RAFT_INT,
        prev_log_index=MAX_RAFT_INT,
        prev_log_term=MAX_RAFT_INT,
        entries=entries,
        leader_commit=MAX_RAFT_INT,
    )


@pytest.mark.parametrize("max_frame", FRAMES)
def test_a_full_batch_fits_the_frame(max_frame: int) -> None:
    """As many entries as allowed, commands filling the byte budget, widest ints: it fits."""
    limits = raft_message_limits(max_frame)
    n = limits.max_entries_per_message
    size = limits.max_bytes_per_message // n
    entries = tuple(
        Entry(term=MAX_RAFT_INT, index=MAX_RAFT_INT - n + i, command=b"x" * size) for i in range(n)
    )
    log = RaftLog(0, 0, [Entry(term=1, index=i + 1, command=b"x" * size) for i in range(n + 5)])

    assert len(log.batch(1, n, limits.max_bytes_per_message)) == n
    assert frame_of(worst_append(entries)) <= max_frame


@pytest.mark.parametrize("max_frame", FRAMES)
def test_a_snapshot_chunk_fits_the_frame(max_frame: int) -> None:
    limits = raft_message_limits(max_frame)
    chunk = InstallSnapshot(
        src=2,
        dst=1,
        term=MAX_RAFT_INT,
        last_included_index=MAX_RAFT_INT,
        last_included_term=MAX_RAFT_INT,
        offset=MAX_RAFT_INT,
        data=b"s" * limits.snapshot_chunk_bytes,
        done=False,
        checksum=2**32 - 1,
    )

    assert frame_of(chunk) <= max_frame


@pytest.mark.parametrize("max_frame", FRAMES)
def test_the_largest_put_goes_alone_and_fits_the_frame(max_frame: int) -> None:
    """One command over the byte budget is sent alone (RaftLog.batch) and still fits:
    the largest value the server takes (frame - 4096), the largest key and client id."""
    value = "v" * (max_frame - 4096)
    op = PutOp(
        key="k" * 1024,
        value=value,
        version=MAX_VERSION,
        client_id="c" * MAX_CLIENT_ID_BYTES,
        request_id=MAX_REQUEST_ID,
        acked_below=MAX_REQUEST_ID,
    )
    command = encode_command(op)
    limits = raft_message_limits(max_frame)
    log = RaftLog(0, 0, [Entry(term=1, index=i, command=command) for i in (1, 2, 3)])
    batch = log.batch(1, limits.max_entries_per_message, limits.max_bytes_per_message)
    widest = tuple(
        Entry(term=MAX_RAFT_INT, index=MAX_RAFT_INT - 3 + e.index, command=e.command) for e in batch
    )

    if len(command) > limits.max_bytes_per_message:
        assert len(batch) == 1
    assert frame_of(worst_append(widest)) <= max_frame


def test_a_frame_too_small_for_raft_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves no room for Raft messages"):
        raft_message_limits(600)


def test_an_oversized_message_is_logged_and_dropped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The transport's send never raises into the Ready loop: one ERROR line naming
    node, term, index and size; the message counts as dropped (Raft resends)."""
    transport = RpcPeerTransport(
        1, {1: "127.0.0.1:1", 2: "127.0.0.1:2"}, None, max_frame_bytes=4096
    )
    big = AppendEntries(
        src=1,
        dst=2,
        term=7,
        prev_log_index=41,
        prev_log_term=7,
        entries=(Entry(term=7, index=42, command=b"x" * 5000),),
        leader_commit=40,
    )
    with caplog.at_level(logging.ERROR, logger="kvraft.node"):
        assert transport.send(big) is False
        assert transport.send(big) is False  # Raft's resend: counted, not logged again
    transport.close()

    assert transport.dropped == 2
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("n1 [term 7] dropped a AppendEntries to n2 at index 41: ")
    assert "exceeds the frame maximum of 4096" in line


def test_the_servers_snapshot_validator_accepts_a_state_and_refuses_junk() -> None:
    store = KVStore()
    store.put("k", "v", 0)

    state = b"".join(state_snapshot.encode_chunks(Sessions(SessionLimits()), store))
    assert snapshot_decodes(state)
    assert not snapshot_decodes(state[:-1])
    assert not snapshot_decodes(store.snapshot())  # a bare store, without its sessions
    assert not snapshot_decodes(b"\xc1junk")
