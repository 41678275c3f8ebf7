"""The replicated state machine: KV operations in, through the Raft log, results out.

A get or put received by this server is encoded as a command and submitted
to Raft; the RPC then waits until the entry at the returned index is applied.
Every server applies every committed entry, in log order, to its own
:class:`KVStore`, whoever submitted it; only the RPC waiting for an index gets
that entry's result. Gets go through the log too, so a deposed leader or a
minority partition can never answer with stale data.

Waiting uses one future per submitted index, resolved by the apply loop,
rather than by polling ``get_committed`` every 10-50 ms, as the classic RSM API does:
the behaviour is the same (a different command at the index, a change of
term or leadership, or a timeout answers WrongLeader), but a commit answers
at once instead of up to one polling period later, and idle waiters cost
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvraft.errors import NotLeader, WrongLeader
from kvraft.kv_protocol import Op
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.server.commands import BadCommand, apply_command, decode_command, encode_command
from kvraft.server.kvstore import KVStore
from kvraft.server.node import RaftNode, StateMachine

log = logging.getLogger("kvraft.rsm")


@dataclass(slots=True)
class _Waiter:
    client_id: str
    request_id: int
    term: int
    future: asyncio.Future[Any]


class RSM(StateMachine):
    """Owns the KV state of one server and the RPCs waiting on the log."""

    def __init__(self, node_id: int, store: KVStore, *, op_timeout_s: float) -> None:
        self.node_id = node_id
        self.store = store
        self.op_timeout_s = op_timeout_s
        self._node: RaftNode | None = None
        # index -> the RPC waiting for the entry it submitted at that index
        self._waiters: dict[int, _Waiter] = {}
        self.skipped_commands = 0

    def attach(self, node: RaftNode) -> None:
        self._node = node

    async def execute(self, op: Op) -> Any:
        """Run ``op`` through the log; its result, or WrongLeader."""
        node = self._node
        assert node is not None, "RSM not attached to a node"
        submitted = node.submit(encode_command(op))
        if submitted is None:
            raise NotLeader(f"n{self.node_id} is not the leader")
        index, term = submitted
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        displaced = self._waiters.get(index)
        if displaced is not None:
            _fail(displaced, f"index {index} reused in term {term}")
        waiter = _Waiter(op.client_id, op.request_id, term, future)
        self._waiters[index] = waiter
        try:
            return await asyncio.wait_for(future, self.op_timeout_s)
        except TimeoutError:
            raise WrongLeader(
                f"n{self.node_id}: index {index} not applied within {self.op_timeout_s}s"
            ) from None
        finally:
            if self._waiters.get(index) is waiter:
                del self._waiters[index]

    # ---------------------------------------------------- StateMachine (apply loop)

    def apply(self, entry: Entry) -> None:
        op: Op | None = None
        result: Any = None
        if entry.command is not None:
            try:
                op = decode_command(entry.command)
            except BadCommand as exc:
                # Only a bug or a raw test-hook submit puts such a command in the log;
                # every replica skips it alike, so they stay identical.
                self.skipped_commands += 1
                log.warning(
                    "n%d skipped undecodable command at index %d: %s",
                    self.node_id,
                    entry.index,
                    exc,
                )
            else:
                result = apply_command(self.store, op)
        waiter = self._waiters.pop(entry.index, None)
        if waiter is None or waiter.future.done():
            return
        if (
            op is not None
            and entry.term == waiter.term
            and op.client_id == waiter.client_id
            and op.request_id == waiter.request_id
        ):
            waiter.future.set_result(result)
        else:
            _fail(waiter, f"another command was committed at index {entry.index}")

    def restore(self, snapshot: Snapshot) -> None:
        self.store = KVStore.restore(snapshot.data)
        for index in [i for i in self._waiters if i <= snapshot.index]:
            _fail(self._waiters.pop(index), f"index {index} replaced by a snapshot")

    def capture_snapshot(self) -> Callable[[], bytes]:
        # A shallow copy is consistent: the store's values are immutable tuples.
        copy = self.store.copy()

        def encode() -> bytes:
            chunks = []
            for chunk in copy.snapshot_chunks():
                chunks.append(chunk)
                # Hand the GIL to the event loop thread now rather than after the
                # 5 ms switch interval: keeps its latency low while this runs.
                time.sleep(0)
            return b"".join(chunks)

        return encode

    def on_role_change(self, term: int, is_leader: bool) -> None:
        for index, waiter in list(self._waiters.items()):
            if waiter.term != term or not is_leader:
                del self._waiters[index]
                _fail(waiter, f"leadership lost (now term {term})")


def _fail(waiter: _Waiter, why: str) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(WrongLeader(why))
