"""The state machine's snapshot: its client sessions and its key-value store, in one strict format.

Layout (msgpack): ``[STATE_SNAPSHOT_FORMAT, sessions, store]``, where
``sessions`` is :meth:`Sessions.pack_into`'s array and ``store`` is the
:class:`KVStore` snapshot value (``[SNAPSHOT_FORMAT, revision, items, leases]``) as it stands.
Both parts are canonical (sessions in use order, keys sorted), so replicas
with the same state write the same bytes. The decoder refuses anything else:
another format number (format 2, before revisions and the data API, and the
pre-sessions snapshot, a bare KVStore snapshot of format 1, are refused: a
store without its sessions would answer retries differently from the replicas
that kept them), a malformed part, truncation, or bytes after the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from kvraft.server.kvstore import BadSnapshot, KVStore, decode_whole
from kvraft.server.sessions import SessionLimits, Sessions

# Bumped when the layout changes; decode refuses any other value.
# 3: sessions keep every write's result (as its wire bytes), the store has revisions.
STATE_SNAPSHOT_FORMAT = 3


def encode_chunks(sessions: Sessions, store: KVStore) -> Iterator[bytes]:
    """The snapshot's bytes in pieces; neither argument may change meanwhile (pass copies)."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_array_header(3)
    packer.pack(STATE_SNAPSHOT_FORMAT)
    sessions.pack_into(packer)
    yield packer.bytes()
    yield from store.snapshot_chunks()


def encoder(sessions: Sessions, store: KVStore) -> Callable[[], bytes]:
    """A function that encodes the snapshot, for a worker thread (copies: see encode_chunks)."""

    def encode() -> bytes:
        chunks = []
        for chunk in encode_chunks(sessions, store):
            chunks.append(chunk)
            # Hand the GIL to the event loop thread now rather than after the
            # 5 ms switch interval: keeps its latency low while this runs.
            time.sleep(0)
        return b"".join(chunks)

    return encode


def decode(data: bytes, limits: SessionLimits | None = None) -> tuple[Sessions, KVStore]:
    """The sessions and store :func:`encode_chunks` wrote; BadSnapshot for anything else."""

    def read(unpacker: Any) -> tuple[Sessions, KVStore]:
        try:
            header = unpacker.read_array_header()
        except ValueError:
            raise BadSnapshot("state snapshot is not a msgpack array") from None
        if header != 3:
            raise BadSnapshot("state snapshot is not a [format, sessions, store] triple")
        fmt = unpacker.unpack()
        if type(fmt) is not int or fmt != STATE_SNAPSHOT_FORMAT:
            raise BadSnapshot(
                f"unknown state snapshot format {fmt!r} (expected {STATE_SNAPSHOT_FORMAT})"
            )
        return Sessions.read(unpacker, limits), KVStore.read_from(unpacker)

    return decode_whole(data, read)
