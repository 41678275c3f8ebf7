"""A tiny in-memory cluster for paper tests: cores, MemoryStorage, a manual network.

The driver loop here performs every Ready in the durability order of
``kvraft.raft.ready`` (persist, send, apply, advance). Messages sit in a queue
until a test delivers them, so a test decides exactly what happens when.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvraft.raft.config import RaftConfig
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import Entry, Message
from kvraft.raft.read_index import ReadState
from kvraft.raft.ready import HardState, PersistentState, Ready, Snapshot
from kvraft.raft.storage import MemoryStorage


def make_config(node_id: int, peers: Iterable[int] = (1, 2, 3), **overrides: object) -> RaftConfig:
    settings: dict[str, object] = {
        "election_timeout_ticks": 10,
        "heartbeat_interval_ticks": 2,
        "rng": random.Random(node_id),
    }
    settings.update(overrides)
    return RaftConfig(node_id=node_id, peers=tuple(peers), **settings)  # type: ignore[arg-type]


def log_of(terms: Iterable[int], start: int = 1) -> tuple[Entry, ...]:
    """Entries with the given terms from index ``start`` on; commands name index and term."""
    return tuple(
        Entry(term=term, index=start + offset, command=f"{start + offset}@{term}".encode())
        for offset, term in enumerate(terms)
    )


def make_core(
    node_id: int = 1,
    peers: Iterable[int] = (1, 2, 3),
    *,
    term: int = 0,
    voted_for: int | None = None,
    commit: int = 0,
    entries: tuple[Entry, ...] = (),
    snapshot: Snapshot | None = None,
    **overrides: object,
) -> RaftCore:
    state = PersistentState(HardState(term, voted_for, commit), snapshot, entries)
    return RaftCore(make_config(node_id, peers, **overrides), state)


def drain(core: RaftCore) -> list[Ready]:
    """Take every Ready, pretending the driver persisted, sent and applied each."""
    readies = []
    while core.has_ready():
        ready = core.ready()
        core.advance(ready)
        readies.append(ready)
    return readies


def sent(core: RaftCore) -> list[Message]:
    """The messages of every pending Ready (which are then advanced)."""
    return [msg for ready in drain(core) for msg in ready.messages]


@dataclass
class Cluster:
    """Cores wired through a message queue; ``cut`` pairs cannot talk."""

    cores: dict[int, RaftCore]
    storages: dict[int, MemoryStorage]
    queue: list[Message] = field(default_factory=list)
    applied: dict[int, list[Entry]] = field(default_factory=dict)
    isolated: set[int] = field(default_factory=set)
    delivered: int = 0
    # Read-index reads each node's Readies confirmed, and failed (request ids).
    reads: dict[int, list[ReadState]] = field(default_factory=dict)
    failed_reads: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, size: int = 3, **overrides: object) -> Cluster:
        ids = tuple(range(1, size + 1))
        cores = {i: RaftCore(make_config(i, ids, **overrides), PersistentState()) for i in ids}
        return cls(cores, {i: MemoryStorage() for i in ids}, applied={i: [] for i in ids})

    def add_node(self, node: int, **overrides: object) -> RaftCore:
        """A new empty node that joins (``peers=()``); it learns its configuration from a leader."""
        core = RaftCore(make_config(node, (), **overrides), PersistentState())
        self.cores[node] = core
        self.storages[node] = MemoryStorage()
        self.applied[node] = []
        return core

    def process(self, node: int) -> None:
        """Perform every pending Ready of ``node`` in the durability order."""
        core = self.cores[node]
        while core.has_ready():
            ready = core.ready()
            self.storages[node].save(ready.hard_state, ready.entries, ready.snapshot)
            self.queue.extend(ready.messages)
            if ready.snapshot is not None:
                self.applied[node] = []
            self.applied[node].extend(ready.committed)
            self.reads.setdefault(node, []).extend(ready.reads)
            self.failed_reads.setdefault(node, []).extend(ready.failed_reads)
            core.advance(ready)

    def process_all(self) -> None:
        for node in self.cores:
            self.process(node)

    def can_talk(self, src: int, dst: int) -> bool:
        # A node not (yet) built is unreachable.
        return src not in self.isolated and dst not in self.isolated and dst in self.cores

    def deliver(self, keep: Callable[[Message], bool] = lambda msg: True) -> int:
        """Deliver the queued messages that ``keep`` accepts (others are dropped)."""
        self.process_all()
        batch, self.queue = self.queue, []
        for msg in batch:
            if keep(msg) and self.can_talk(msg.src, msg.dst):
                self.delivered += 1
                self.cores[msg.dst].step(msg)
                self.process(msg.dst)
        return len(batch)

    def stabilize(self, rounds: int = 100) -> None:
        """Deliver until no message is left."""
        self.process_all()
        for _ in range(rounds):
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    def tick(self, ticks: int = 1, nodes: Iterable[int] | None = None) -> None:
        """Tick the given nodes (all by default), delivering messages after each tick."""
        chosen = list(self.cores if nodes is None else nodes)
        for _ in range(ticks):
            for node in chosen:
                self.cores[node].tick()
            self.stabilize()

    def elect(self, node: int) -> None:
        self.cores[node].campaign()
        self.stabilize()
        assert self.cores[node].role is Role.LEADER, self.cores[node].status()

    def leaders(self) -> list[int]:
        return [i for i, core in self.cores.items() if core.role is Role.LEADER]

    def propose(self, node: int, *commands: bytes) -> list[tuple[int, int] | None]:
        return [self.cores[node].propose(command) for command in commands]
