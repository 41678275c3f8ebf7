"""The world of the node simulator: its network, its disk, and what the checker watches.

Each class stands in for one thing a server process has, through the
parameters RaftNode takes (:mod:`kvraft.server.driver_io`) or a subclass of
the real component: :class:`SimTransport` for the RPC layer, :class:`SimDisk`
for the worker threads, :class:`ObservedStorage` (MemoryStorage, the
in-memory twin of SQLite) for the data dir, :class:`ObservedRSM` (the real
RSM) for the state machine. :class:`SimNode` is one server across crashes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import msgpack

from kvraft.raft.core import RaftCore
from kvraft.raft.messages import Entry, Message
from kvraft.raft.ready import HardState, Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.server.kvstore import KVStore
from kvraft.server.node import RaftNode
from kvraft.server.rsm import RSM
from kvraft.server.sessions import Sessions

from .simulator import Checker

if TYPE_CHECKING:
    from .node_sim import NodeSimulation

T = TypeVar("T")


def kv_digest(store: KVStore, sessions: Sessions | None = None) -> bytes:
    """The whole state of a store and its sessions, as a short digest (compared across replicas).

    Sessions are replicated state too: replicas that forgot different sessions
    would answer the same retry differently.
    """
    items = sorted((key, store.lookup(key)) for key in store)
    digest = hashlib.blake2b(repr(items).encode(), digest_size=16)
    if sessions is not None:
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        sessions.pack_into(packer)
        digest.update(packer.bytes())
    return digest.digest()


# --------------------------------------------------------------- the world


class SimTransport:
    """A node's PeerTransport: messages into the simulated network."""

    def __init__(self, sim: NodeSimulation) -> None:
        self._sim = sim

    def send(self, message: Message) -> bool:
        return self._sim.network_send(message)

    def close(self) -> None:
        pass


class SimDisk:
    """A node's Workers: storage calls one at a time after a delay, on virtual time.

    The call itself happens after the delay, all at once (MemoryStorage.save
    is atomic, as SQLite's transaction is): a node halted while a call waits
    loses exactly that call.
    """

    def __init__(self, sim: NodeSimulation) -> None:
        self._sim = sim
        self._lock = asyncio.Lock()
        self.busy = False

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            self.busy = True
            try:
                await asyncio.sleep(self._sim.write_delay_s())
                return fn(*args)
            finally:
                self.busy = False

    async def encode(self, fn: Callable[..., T], *args: object) -> T:
        await asyncio.sleep(self._sim.write_delay_s())
        return fn(*args)

    def shutdown(self) -> None:
        pass


class ObservedStorage(MemoryStorage):
    """MemoryStorage that shows the checker every log it persists (Log Matching)."""

    def __init__(self, node_id: int, checker: Checker, fail: Callable[[str], None]) -> None:
        super().__init__()
        self.node_id = node_id
        self._checker = checker
        self._fail = fail
        self.compactions = 0  # snapshots the node took and stored

    def compact(self, snapshot: Snapshot) -> None:
        if snapshot.index > self._offset():
            self.compactions += 1
        super().compact(snapshot)

    def last_index(self) -> int:
        return self._offset() + len(self.entries)

    def term_at(self, index: int) -> int | None:
        """The persisted term at ``index`` (of the snapshot at its index), or None."""
        if index == 0:
            return 0
        if self.snapshot is not None and index == self.snapshot.index:
            return self.snapshot.term
        offset = self._offset()
        if offset < index <= self.last_index():
            return self.entries[index - offset - 1].term
        return None

    def holds(self, entry: Entry) -> bool:
        """Whether ``entry`` is on this disk (or covered by the persisted snapshot)."""
        if entry.index <= self._offset():
            return True
        return (
            entry.index <= self.last_index()
            and self.entries[entry.index - self._offset() - 1] == entry
        )

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        if entries:
            if snapshot is not None:
                prev_term: int | None = snapshot.term
            else:
                prev_term = self.term_at(entries[0].index - 1)
            assert prev_term is not None, (entries[0], self._offset(), self.last_index())
            self._checker.entries_logged(self.node_id, list(entries), prev_term)
        super().save(hard_state, entries, snapshot)
        if self.hard_state.commit_index > self.last_index():
            self._fail(
                f"n{self.node_id} persisted commit index {self.hard_state.commit_index} "
                f"beyond its persisted log (last index {self.last_index()})"
            )


class ObservedRSM(RSM):
    """The real RSM, with the checker looking at every entry it applies or restores."""

    def __init__(self, sim: NodeSimulation, sim_node: SimNode) -> None:
        super().__init__(
            sim_node.id,
            KVStore(),
            op_timeout_s=sim.op_timeout_s,
            session_limits=sim.session_limits,
        )
        self._sim = sim
        self._sim_node = sim_node

    def apply(self, entry: Entry) -> None:
        sim, sim_node = self._sim, self._sim_node
        if not sim_node.storage.holds(entry):
            sim.fail(f"n{self.node_id} applied {entry} before it was on its disk")
        # RSM.applied: the last index this RSM applied or restored.
        if entry.index != self.applied.index + 1:
            sim.fail(
                f"n{self.node_id} applied index {entry.index} after index {self.applied.index}"
            )
        super().apply(entry)
        sim.checker.state_reached(
            self.node_id, entry.index, kv_digest(self.store, self.sessions), "applying"
        )
        core = sim_node.core
        sim.checker.committed_entry(self.node_id, entry, core.current_term if core else 0)

    def restore(self, snapshot: Snapshot) -> None:
        super().restore(snapshot)
        checker = self._sim.checker
        if snapshot.index not in checker.states:
            self._sim.fail(
                f"n{self.node_id} restored a snapshot at {snapshot.index} nobody applied"
            )
        checker.state_reached(
            self.node_id,
            snapshot.index,
            kv_digest(self.store, self.sessions),
            "restoring a snapshot",
        )
        if self._sim_node.node is not None:  # not the load at construction: from a leader
            self._sim.installs += 1


@dataclass
class SimNode:
    """One server: its disk survives crashes, its RaftNode and RSM do not."""

    id: int
    storage: ObservedStorage
    node: RaftNode | None = None
    rsm: ObservedRSM | None = None
    disk: SimDisk | None = None
    # The client operations in progress here (a dict: cancelled in a fixed order).
    clients: dict[asyncio.Task[None], None] = field(default_factory=dict)
    # What the Checker's observe() keeps per node.
    seen_commit: int = 0
    leader_checked_term: int = -1

    @property
    def core(self) -> RaftCore | None:
        return self.node.core if self.node is not None else None
