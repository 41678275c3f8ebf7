"""Snapshots encoded by a forked child: the same bytes as the thread's, the state as of the fork,
failures reported, and no child left behind."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kvraft.kv_protocol import PutOp
from kvraft.server import state_snapshot
from kvraft.server.forked_encoder import (
    CHILD_NICENESS,
    EncodeFailed,
    ForkedEncoding,
    fork_encoder,
    fork_supported,
)
from kvraft.server.kvstore import KVStore
from kvraft.server.rsm import RSM
from kvraft.server.sessions import Sessions

pytestmark = pytest.mark.skipif(not fork_supported(), reason="needs os.fork")


def _store(keys: int) -> KVStore:
    store = KVStore()
    for i in range(keys):
        store.put(f"k{i:05d}", f"value {i}" * 3, 0)
    return store


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists (a zombie counts: it was not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_forked_encoding_gives_the_bytes_the_thread_encoder_gives() -> None:
    sessions, store = Sessions(), _store(3000)
    expected = state_snapshot.encoder(sessions.copy(), store.copy())()
    encode = fork_encoder(lambda: state_snapshot.encode_chunks(sessions, store))
    assert encode is not None
    assert encode() == expected
    assert state_snapshot.decode(expected)[1] == store


def test_the_child_encodes_the_state_as_of_the_fork_not_as_of_the_read() -> None:
    """What makes a snapshot exactly the state at its index: writes after the fork are not in it."""
    store = _store(100)
    before = store.snapshot()
    encode = ForkedEncoding(store.snapshot_chunks)
    for i in range(100):
        store.put(f"k{i:05d}", "changed", 1)
    store.put("new", "key", 0)
    assert encode() == before
    assert KVStore.restore(before) != store


def test_the_child_encodes_at_a_lower_priority_than_the_server() -> None:
    """The child yields the CPU to its parent: it runs CHILD_NICENESS nicer (at most 19).

    Reference: benchmarks/results/memory-1m.md (three children at the servers'
    priority took most of a 2-core machine, and every put waited 630-730 ms)
    """
    parent = os.nice(0)
    encode = ForkedEncoding(lambda: [str(os.nice(0)).encode()])
    assert int(encode()) == min(19, parent + CHILD_NICENESS)
    assert os.nice(0) == parent  # the parent's own priority is untouched


def test_the_child_is_reaped_once_its_bytes_are_read() -> None:
    encode = ForkedEncoding(lambda: [b"abc", b"def"])
    assert encode() == b"abcdef"
    assert not _alive(encode.pid)


def test_a_child_that_fails_half_way_is_an_error_not_a_short_snapshot() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 1000
        raise RuntimeError("encoder bug")

    encode = ForkedEncoding(chunks)
    with pytest.raises(EncodeFailed, match="status 1"):
        encode()
    assert not _alive(encode.pid)


def test_a_child_killed_mid_stream_is_an_error() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 1000
        time.sleep(30)  # the test kills it here

    encode = ForkedEncoding(chunks)
    killer = threading.Timer(0.3, os.kill, (encode.pid, 9))
    killer.start()
    started = time.monotonic()
    with pytest.raises(EncodeFailed):
        encode()
    assert time.monotonic() - started < 10


def test_an_encoding_dropped_unread_kills_and_reaps_its_child() -> None:
    encode = ForkedEncoding(lambda: [b"y" * (8 << 20)])  # more than a pipe holds: it blocks
    pid = encode.pid
    del encode
    gc.collect()
    assert not _alive(pid)


def test_the_child_holds_no_listening_socket_of_its_parent() -> None:
    """A restarted server must be able to bind its port while a snapshot child still runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    gate_r, gate_w = os.pipe()

    def chunks() -> Iterator[bytes]:
        os.read(gate_r, 1)  # the child waits here until the parent has rebound the port
        yield b"done"

    encode = ForkedEncoding(chunks)
    listener.close()
    time.sleep(0.1)  # the child has closed its copies by now
    rebound = socket.create_server(("127.0.0.1", port))
    rebound.close()
    os.write(gate_w, b"g")
    # The child closed every descriptor but its pipe, so the gate fd is gone too:
    # its read fails, and it reports failure rather than hang.
    with pytest.raises(EncodeFailed):
        encode()
    os.close(gate_r)
    os.close(gate_w)


def test_an_rsm_that_forks_snapshots_the_same_state_as_one_that_copies() -> None:
    forking = RSM(0, KVStore(), op_timeout_s=1.0, fork_snapshots=True)
    copying = RSM(0, KVStore(), op_timeout_s=1.0)
    for rsm in (forking, copying):
        for i in range(50):
            op = PutOp(f"k{i}", "v", 0, "c1", i + 1, i + 1)
            rsm.sessions.apply(rsm.store, op, i + 1)
    forked = forking.capture_snapshot()
    assert isinstance(forked, ForkedEncoding)
    assert forked() == copying.capture_snapshot()()
