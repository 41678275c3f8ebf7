"""The leader's side of ``kvraft snapshot save``: a consistent snapshot, handed out in chunks.

A snapshot of the state machine can be far larger than a frame
(``--max-frame-bytes``), so it is fetched in three calls, all needing an
admin token:

- ``snapshot.open``: the leader first runs a read through the log (a get
  under a client id with no session, which changes no state: see
  ``Sessions.apply``), so it has applied every entry committed before the
  call, whichever leader acknowledged it; a deposed leader fails that read
  (``not_leader``). Then it captures its state as of its applied index (the
  RSM's ``capture_snapshot``, the copy a node takes for its own snapshots:
  cheap on the event loop), encodes and hashes it in a worker thread, and
  answers ``{id, size, index, term, revision, cluster_id, sha256,
  chunk_bytes}``. So the snapshot holds at least every write acknowledged
  before the call.
- ``snapshot.read [id, offset, max_bytes]``: up to ``min(max_bytes,
  chunk_bytes)`` of the data from ``offset`` (empty at the end);
  ``chunk_bytes`` is this server's frame less :data:`CHUNK_OVERHEAD_BYTES`
  (at most :data:`MAX_CHUNK_BYTES`), so a reply always fits its frame, and
  ``max_bytes`` lets a client with a smaller frame limit ask for less.
- ``snapshot.close id``: frees it (idempotent).

Bounds: at most :data:`MAX_OPEN_SNAPSHOTS` open at once per server (each
holds its encoded bytes in memory; a third open is refused ``busy``), and one
not read for :data:`SNAPSHOT_IDLE_TIMEOUT_S` is dropped (by a timer on the
loop, and checked again on every call), so a client that dies mid-fetch
leaks nothing for long. An unknown or expired id is
``snapshot_unknown``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from kvraft.errors import Busy, NotLeader, RemoteError, WrongLeader
from kvraft.kv_protocol import FIRST_REQUEST_ID, GetOp
from kvraft.raft.core import Role
from kvraft.server.node import RaftNode
from kvraft.server.rsm import RSM

log = logging.getLogger("kvraft.backup")

# Two: an operator's backup and a retry of it (or a second backup job); each
# holds a whole encoded snapshot in memory, so not more.
MAX_OPEN_SNAPSHOTS: Final = 2
# A fetch reads a chunk at least this often; a client gone longer frees its snapshot.
SNAPSHOT_IDLE_TIMEOUT_S: Final = 60.0
# What a snapshot.read reply's frame holds besides the chunk (envelope, ids):
# generous, as ServerOptions keeps 4096 bytes beside the largest value.
CHUNK_OVERHEAD_BYTES: Final = 4096
# The largest chunk whatever the frame: each read copies and packs its chunk on
# the event loop, and 1 MiB of that costs well under a millisecond, where a
# 16 MiB chunk held the loop for tens (measured: see docs/architecture.md).
MAX_CHUNK_BYTES: Final = 1 << 20

OPEN, READ, CLOSE = "snapshot.open", "snapshot.read", "snapshot.close"
METHODS: Final = (OPEN, READ, CLOSE)


@dataclass(slots=True)
class _Open:
    data: bytes
    last_used_s: float
    meta: dict[str, Any] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class SnapshotServer:
    """The open snapshots of one server and the three calls on them."""

    def __init__(
        self,
        node: RaftNode,
        rsm: RSM,
        *,
        cluster_id: str,
        max_frame_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``barrier`` (tests): what makes the state current; a read through the log."""
        self.node = node
        self.rsm = rsm
        self.cluster_id = cluster_id
        self.chunk_bytes = min(max_frame_bytes - CHUNK_OVERHEAD_BYTES, MAX_CHUNK_BYTES)
        if self.chunk_bytes <= 0:
            raise ValueError(f"--max-frame-bytes {max_frame_bytes} leaves no room for chunks")
        self.clock = clock
        self.barrier = barrier if barrier is not None else self._read_through_the_log
        self._open: dict[str, _Open] = {}

    @property
    def open_count(self) -> int:
        """Snapshots held now (being encoded or open), without expiring any first."""
        return len(self._open)

    async def handle(self, method: str, args: Any) -> Any:
        if method == OPEN:
            return await self._open_snapshot()
        if method == READ:
            if (
                not isinstance(args, (list, tuple))
                or len(args) != 3
                or not isinstance(args[0], str)
                or type(args[1]) is not int
                or type(args[2]) is not int
                or args[2] < 1
            ):
                raise RemoteError(
                    "bad_request", f"{READ} takes [id, offset, max_bytes >= 1], not {args!r}"
                )
            return self._read(args[0], args[1], args[2])
        if method == CLOSE:
            if not isinstance(args, str):
                raise RemoteError("bad_request", f"{CLOSE} takes an id, not {args!r}")
            self._drop(args)
            return None
        raise AssertionError(method)

    def _expire(self) -> None:
        now = self.clock()
        for sid, slot in list(self._open.items()):
            if slot.meta and now - slot.last_used_s > SNAPSHOT_IDLE_TIMEOUT_S:
                self._drop(sid)
                log.info(
                    "n%d dropped backup snapshot %s: not read for %g s",
                    self.node.id,
                    sid,
                    SNAPSHOT_IDLE_TIMEOUT_S,
                )

    def _drop(self, sid: str) -> None:
        slot = self._open.pop(sid, None)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()

    def _arm(self, sid: str, delay_s: float) -> None:
        """Check ``sid`` for idleness in ``delay_s``: its memory goes even if no call comes."""
        slot = self._open[sid]
        slot.timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer, sid)

    def _on_timer(self, sid: str) -> None:
        slot = self._open.get(sid)
        if slot is None:
            return
        self._expire()
        if sid in self._open:  # read meanwhile: look again when it could next expire
            idle = self.clock() - slot.last_used_s
            self._arm(sid, max(SNAPSHOT_IDLE_TIMEOUT_S - idle, 0.0) + 0.01)

    async def _open_snapshot(self) -> dict[str, Any]:
        self._expire()
        if len(self._open) >= MAX_OPEN_SNAPSHOTS:
            raise RemoteError(
                "busy", f"{MAX_OPEN_SNAPSHOTS} backup snapshots open already; retry later"
            )
        core = self.node.core
        if core.role is not Role.LEADER:
            raise RemoteError("not_leader", f"n{self.node.id} is not the leader")
        # Reserve the slot before awaiting, so concurrent opens respect the bound.
        sid = secrets.token_hex(8)
        slot = _Open(b"", self.clock())
        self._open[sid] = slot
        started = time.monotonic()
        try:
            await self.barrier()
            # Captured between applies (no await since reading these): the state as of
            # applying_index exactly, whose term the log or the snapshot knows.
            index = core.applying_index
            term = core.term(index)
            assert term is not None, f"no term at applied index {index}"
            revision = self.rsm.store.revision
            encode = self.rsm.capture_snapshot()
            data = await self.node.workers.encode(encode)
            digest = await self.node.workers.encode(_sha256, data)
        except BaseException:
            self._drop(sid)
            raise
        slot.data = data
        slot.last_used_s = self.clock()
        self._arm(sid, SNAPSHOT_IDLE_TIMEOUT_S + 0.01)
        slot.meta = {
            "id": sid,
            "size": len(data),
            "index": index,
            "term": term,
            "revision": revision,
            "cluster_id": self.cluster_id,
            "sha256": digest,
            "chunk_bytes": self.chunk_bytes,
        }
        log.info(
            "n%d [term %d] opened backup snapshot %s at index %d (%d bytes) in %.0f ms",
            self.node.id,
            core.current_term,
            sid,
            index,
            len(data),
            (time.monotonic() - started) * 1000,
        )
        return dict(slot.meta)

    def _read(self, sid: str, offset: int, max_bytes: int) -> bytes:
        self._expire()
        slot = self._open.get(sid)
        if slot is None or not slot.meta:
            raise RemoteError("snapshot_unknown", f"no open backup snapshot {sid!r} (expired?)")
        if not 0 <= offset <= len(slot.data):
            raise RemoteError(
                "bad_request", f"offset {offset} outside the snapshot's {len(slot.data)} bytes"
            )
        slot.last_used_s = self.clock()
        return slot.data[offset : offset + min(max_bytes, self.chunk_bytes)]

    async def _read_through_the_log(self) -> None:
        """Wait until this leader applied a read committed after the call; else not_leader.

        A get from a client id with no session and ``acked_below`` past the first
        request is answered without opening one, so it leaves every replica's
        state as it was.
        """
        op = GetOp(
            key="",
            client_id=f"backup-{secrets.token_hex(8)}",
            request_id=FIRST_REQUEST_ID + 1,
            acked_below=FIRST_REQUEST_ID + 1,
        )
        try:
            await self.rsm.execute(op)
        except (NotLeader, WrongLeader) as exc:
            raise RemoteError("not_leader", f"n{self.node.id}: {exc}") from None
        except Busy as exc:
            raise RemoteError("busy", str(exc)) from None


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
