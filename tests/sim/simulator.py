"""A deterministic simulator of a Raft cluster of RaftCores (after TigerBeetle's VOPR).

Everything is decided by one seed: the fault profile (how often messages are
dropped, duplicated, delayed and so reordered, nodes partitioned, crashed and
restarted), the Raft settings, and every event. Time is virtual: one loop
iteration is one tick, and ``RaftCore.tick()`` is called directly.

Each node is a RaftCore over a ``MemoryStorage`` plus a tiny state machine (a
hash chain over the applied commands). The driver loop performs every Ready in
the durability order of ``kvraft.raft.ready`` — persist, send, apply, advance
(a leader's messages leave before the persist, as ``send_before_persist`` allows) —
and may crash the node between any two of those steps; a crash loses whatever
was not saved, and a restart rebuilds the core from ``MemoryStorage.load()``.

A run has a safety phase (faults on) and a liveness phase (network healed,
every node restarted: a leader must be elected and a new command must be
applied by every node within a bounded number of ticks). The :class:`Checker`
watches from outside the code under test after every step: election safety,
log matching, leader completeness, state machine safety, and the Ready
contract (committed entries are persisted, the persisted commit index never
exceeds the persisted log). Some seeds ask nodes for read-index reads and
pause nodes (as SIGSTOP would: no ticks, no steps, messages to them held
until they resume), leaders mostly; :mod:`tests.sim.read_check` checks every
read's answer against the commits of the whole cluster. A violation raises
:class:`Violation` whose message ends with the one command that replays the seed.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kvraft.raft.config import RaftConfig
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.messages import Entry, InstallSnapshot, Message, TimeoutNow
from kvraft.raft.ready import PersistentState, Ready, Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.raft.transfer import TransferRefused

from .membership_sim import SPARES, MembershipChecker, MembershipEvents
from .planted import PLANTED
from .read_check import ReadChecker
from .transfer_check import TransferChecker

CoreFactory = Callable[[RaftConfig, PersistentState], RaftCore]

REPLAY_COMMAND = ".venv/bin/python -m tests.sim.replay --seed {seed} --nodes {nodes}"

logger = logging.getLogger("kvraft.sim")


class Violation(AssertionError):
    """A Raft property failed; the message says which, where, and how to replay."""


def replay_command(seed: int, nodes: int, planted: str | None = None, members: bool = False) -> str:
    command = REPLAY_COMMAND.format(seed=seed, nodes=nodes)
    if members:
        command += " --members"
    return command if planted is None else f"{command} --planted {planted}"


# ------------------------------------------------------------------- the seed


@dataclass(frozen=True)
class Profile:
    """How hostile the world is, and how Raft is tuned: all picked by the seed."""

    drop: float
    duplicate: float
    max_delay_ticks: int
    long_delay: float  # per message: held back 5-40 ticks, to arrive long stale
    partition: float  # per tick: start a partition
    heal: float  # per tick: end it
    crash: float  # per tick: crash a random node
    crash_in_ready: float  # per Ready: crash between two of its steps
    crash_writing: float  # per tick: crash a node whose (slow) write is not done, losing it
    slow_disk: float  # per Ready: it takes 1..max_write_ticks ticks to persist
    max_write_ticks: int  # a slow write's longest: time for a leader's early messages to
    # be answered before its own write is done (Ready.send_before_persist)
    restart: float  # per tick: restart a random crashed node
    reboot: float  # per tick: crash a random node and restart it at once
    propose: float  # per tick
    compact: float  # per tick
    election_timeout_ticks: int
    heartbeat_interval_ticks: int
    max_entries_per_message: int
    max_bytes_per_message: int
    max_inflight_messages: int
    snapshot_chunk_bytes: int
    pre_vote: bool
    check_quorum: bool
    check_quorum_ticks: int
    # per tick: ask a leader to transfer its leadership (thesis §3.10). Drawn from a
    # random stream of its own, after the rest (see Simulation): seeds that transfer
    # nothing run exactly as they did before transfers existed.
    transfer: float = 0.0

    @classmethod
    def pick(cls, rng: random.Random) -> Profile:
        calm = rng.random() < 0.15
        election_timeout_ticks = rng.choice([8, 10, 12])
        return cls(
            drop=0.0 if calm else rng.choice([0.0, 0.02, 0.05, 0.1, 0.2]),
            duplicate=0.0 if calm else rng.choice([0.0, 0.02, 0.1]),
            max_delay_ticks=rng.choice([1, 1, 2, 3]),
            long_delay=0.0 if calm else rng.choice([0.0, 0.0, 0.01, 0.05]),
            partition=0.0 if calm else rng.choice([0.0, 0.01, 0.03]),
            heal=rng.choice([0.05, 0.1, 0.2]),
            crash=0.0 if calm else rng.choice([0.0, 0.005, 0.01, 0.02]),
            crash_in_ready=0.0 if calm else rng.choice([0.0, 0.002, 0.01, 0.03]),
            crash_writing=0.0 if calm else rng.choice([0.0, 0.0, 0.05, 0.2]),
            slow_disk=rng.choice([0.0, 0.0, 0.2, 0.6]),
            max_write_ticks=rng.choice([2, 2, 6]),
            restart=rng.choice([0.05, 0.1, 0.3]),
            reboot=0.0 if calm else rng.choice([0.0, 0.01, 0.05]),
            propose=rng.choice([0.1, 0.3, 0.6]),
            compact=rng.choice([0.0, 0.05, 0.2, 0.5]),
            election_timeout_ticks=election_timeout_ticks,
            heartbeat_interval_ticks=rng.choice([2, 3]),
            max_entries_per_message=rng.choice([1, 2, 4, 64]),
            max_bytes_per_message=rng.choice([16, 1 << 20]),
            max_inflight_messages=rng.choice([1, 2, 8]),
            snapshot_chunk_bytes=rng.choice([7, 16, 1024]),
            pre_vote=rng.random() < 0.85,
            check_quorum=rng.random() < 0.85,
            check_quorum_ticks=rng.choice([0, 0, election_timeout_ticks]),  # 0: the default
        )

    def liveness_bound_ticks(
        self, longest_log: int, biggest_snapshot: int, command_bytes: int
    ) -> int:
        """Ticks for a healed cluster to elect a leader and bring every node up to date.

        Elections: 20 election timeouts, generous for pre-vote rounds, leases
        running out and split votes. Catching up: a node may need the longest
        log from scratch, at a message's worth of entries (by count and bytes,
        commands of ``command_bytes``) times max_inflight_messages per round
        trip, plus the biggest snapshot at one chunk per round trip.
        """
        round_trip = 2 * self.max_delay_ticks + self.heartbeat_interval_ticks
        per_message = min(
            self.max_entries_per_message, max(1, self.max_bytes_per_message // command_bytes)
        )
        per_round = per_message * self.max_inflight_messages
        rounds = -(-longest_log // per_round) + -(-biggest_snapshot // self.snapshot_chunk_bytes)
        return 20 * self.election_timeout_ticks + rounds * round_trip

    def raft_config(self, node: int, peers: tuple[int, ...], rng: random.Random) -> RaftConfig:
        """The settings of node ``node``: this profile's, with its own random source."""
        return RaftConfig(
            node_id=node,
            peers=peers,
            election_timeout_ticks=self.election_timeout_ticks,
            heartbeat_interval_ticks=self.heartbeat_interval_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            check_quorum_ticks=self.check_quorum_ticks,
            max_entries_per_message=self.max_entries_per_message,
            max_bytes_per_message=self.max_bytes_per_message,
            max_inflight_messages=self.max_inflight_messages,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            rng=rng,
        )


# ------------------------------------------------------------ state machine


# Proposals wait while a leader has this many uncommitted entries.
MAX_BACKLOG = 24

DIGEST_BYTES = 16
EMPTY_DIGEST = bytes(DIGEST_BYTES)


def chain(digest: bytes, entry: Entry) -> bytes:
    """The state after applying ``entry`` to the state ``digest`` (no-ops change nothing)."""
    if entry.command is None:
        return digest
    return hashlib.blake2b(digest + entry.command, digest_size=DIGEST_BYTES).digest()


def snapshot_data(index: int, digest: bytes, padding: int) -> bytes:
    # Padding makes snapshots span several InstallSnapshot chunks.
    return index.to_bytes(8, "big") + digest + b"." * padding


def parse_snapshot(data: bytes) -> tuple[int, bytes]:
    return int.from_bytes(data[:8], "big"), data[8 : 8 + DIGEST_BYTES]


def snapshot_decodes(data: bytes) -> bool:
    """The state machine's validator (RaftConfig.snapshot_validator): the layout of
    :func:`snapshot_data`, an index, a digest, then only padding."""
    head = 8 + DIGEST_BYTES
    return len(data) >= head and data[head:] == b"." * (len(data) - head)


@dataclass
class App:
    """The replicated state machine of one node: applied up to ``index``."""

    index: int = 0
    digest: bytes = EMPTY_DIGEST


@dataclass
class Node:
    id: int
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    core: RaftCore | None = None
    app: App = field(default_factory=App)
    writing: Ready | None = None  # a Ready being persisted (the disk is slow)
    written_at: int = 0
    seen_commit: int = 0  # the highest commit index the checker has recorded of this core
    leader_checked_term: int = -1
    paused_until: int | None = None  # a paused process (SIGSTOP) resumes at this tick
    was_paused: bool = False  # paused at least once since it last started
    held_reads: int = 0  # reads its clients asked for while it was paused


# ------------------------------------------------------------------ checkers


class Checker:
    """Raft's safety properties, checked from outside the cores after every step."""

    def __init__(self, fail: Callable[[str], None]) -> None:
        self.fail = fail
        self.leader_of_term: dict[int, int] = {}
        # (index, term) -> (command, term of the previous entry): Log Matching,
        # by induction, holds iff this map is a function.
        self.entry_ids: dict[tuple[int, int], tuple[bytes | None, int]] = {}
        # index -> (term, command, the term it is known committed in)
        self.committed: dict[int, tuple[int, bytes | None, int]] = {}
        # index -> digest of the state after applying it (the first node to apply decides)
        self.states: dict[int, bytes] = {0: EMPTY_DIGEST}

    # Log Matching (Raft §5.3) ------------------------------------------------

    def entries_logged(self, node: int, entries: list[Entry], prev_term: int) -> None:
        for entry in entries:
            key = (entry.index, entry.term)
            value = (entry.command, prev_term)
            known = self.entry_ids.setdefault(key, value)
            if known != value:
                self.fail(
                    f"log matching: n{node} holds entry {entry.index}@{entry.term} "
                    f"(command {entry.command!r}, previous term {prev_term}), another log "
                    f"held command {known[0]!r} after term {known[1]} there"
                )
            prev_term = entry.term

    # Election safety and leader completeness (Raft §5.2, §5.4) ----------------

    def observe(self, node: Node) -> None:
        core = node.core
        assert core is not None
        if not (
            core.log.snapshot_index <= core.applying_index <= core.commit_index <= core.last_index
        ):
            self.fail(f"n{node.id} index invariant broken: {core.status()}")
        if core.commit_index > node.seen_commit:
            self._record_commits(node, core)
        if core.role is Role.LEADER and node.leader_checked_term != core.current_term:
            node.leader_checked_term = core.current_term
            other = self.leader_of_term.setdefault(core.current_term, core.id)
            if other != core.id:
                self.fail(
                    f"election safety: n{other} and n{core.id} both leaders of term "
                    f"{core.current_term}"
                )
            self._check_leader_completeness(core)

    def _record_commits(self, node: Node, core: RaftCore) -> None:
        start = max(node.seen_commit + 1, core.first_index)
        for index in range(start, core.commit_index + 1):
            entry = core.entry(index)
            assert entry is not None
            self.committed_entry(node.id, entry, core.current_term)
        node.seen_commit = core.commit_index

    def committed_entry(self, node: int, entry: Entry, term: int) -> None:
        known = self.committed.get(entry.index)
        if known is None:
            self.committed[entry.index] = (entry.term, entry.command, term)
            return
        if (known[0], known[1]) != (entry.term, entry.command):
            self.fail(
                f"state machine safety: n{node} committed {entry.command!r} (term "
                f"{entry.term}) at index {entry.index}, where {known[1]!r} (term {known[0]}) "
                f"was committed"
            )
        if term < known[2]:
            self.committed[entry.index] = (known[0], known[1], term)

    def _check_leader_completeness(self, core: RaftCore) -> None:
        """Every entry committed in an earlier term is in the new leader's log."""
        below = core.log.snapshot_index  # its snapshot was checked against `states`
        for index, (term, command, committed_in) in self.committed.items():
            if committed_in >= core.current_term or index <= below:
                continue
            entry = core.entry(index)
            if entry is None or (entry.term, entry.command) != (term, command):
                self.fail(
                    f"leader completeness: n{core.id} became leader of term "
                    f"{core.current_term} without entry {index}@{term} ({command!r}), "
                    f"committed in term {committed_in}; it has {entry}"
                )

    # State machine safety (Raft §5.4.3) ----------------------------------------

    def applied(self, node: Node, entry: Entry) -> None:
        app = node.app
        if entry.index != app.index + 1:
            self.fail(f"n{node.id} applied index {entry.index} after index {app.index}")
        app.index = entry.index
        app.digest = chain(app.digest, entry)
        self.state_reached(node.id, app.index, app.digest, "applying")
        assert node.core is not None
        self.committed_entry(node.id, entry, node.core.current_term)

    def restored(self, node: Node, snapshot: Snapshot) -> None:
        index, digest = parse_snapshot(snapshot.data)
        if index != snapshot.index:
            self.fail(f"n{node.id} snapshot at {snapshot.index} holds state of index {index}")
        if snapshot.index not in self.states:
            self.fail(f"n{node.id} restored a snapshot at {index} that nobody applied")
        self.state_reached(node.id, index, digest, "restoring a snapshot")
        node.app = App(index, digest)

    def state_reached(self, node: int, index: int, digest: bytes, how: str) -> None:
        known = self.states.setdefault(index, digest)
        if known != digest:
            self.fail(
                f"state machine safety: n{node} reached a different state at index {index} "
                f"by {how} than another node did"
            )

    # At rest ------------------------------------------------------------------

    def logs_match(self, nodes: list[Node]) -> None:
        """Log Matching over whole logs: equal (index, term) means equal prefixes."""
        logs = []
        for node in nodes:
            if node.core is not None:
                logs.append((node.id, node.core))
        for pos, (a, core_a) in enumerate(logs):
            for b, core_b in logs[pos + 1 :]:
                lo = max(core_a.first_index, core_b.first_index)
                hi = min(core_a.last_index, core_b.last_index)
                agreed = False
                for index in range(hi, lo - 1, -1):
                    entry_a, entry_b = core_a.entry(index), core_b.entry(index)
                    if agreed and entry_a != entry_b:
                        self.fail(
                            f"log matching: n{a} and n{b} agree above index {index} "
                            f"but differ at it: {entry_a} vs {entry_b}"
                        )
                    if entry_a is not None and entry_b is not None:
                        agreed = agreed or entry_a.term == entry_b.term


# ----------------------------------------------------------------- simulation


@dataclass
class Result:
    seed: int
    nodes: int
    ticks: int
    steps: int
    leaders: int
    committed: int
    crashes: int
    snapshots_installed: int
    liveness_ticks: int
    snapshot_chunks_damaged: int
    transfers: int = 0  # transfers leaders accepted
    transfers_completed: int = 0  # whose target led the next term
    timeouts_now_sent: int = 0
    reads_served: int = 0
    reads_failed: int = 0
    reads_served_after_pause: int = 0
    pauses: int = 0


class Simulation:
    """One seeded run; :meth:`run` raises :class:`Violation` or returns a summary."""

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        *,
        safety_ticks: int = 200,
        liveness_ticks: int | None = None,
        planted: str | None = None,
        members: bool = False,
    ) -> None:
        self.seed = seed
        self.size = nodes
        self.rng = random.Random(f"kvraft-sim/{seed}/{nodes}")
        self.profile = Profile.pick(self.rng)
        self.safety_ticks = safety_ticks
        # None: bounded by the settings and the logs (see _liveness_bound).
        self.liveness_ticks = liveness_ticks
        # A core with a planted bug (see planted.py), to test the checkers.
        self.planted = planted
        self.core_factory: CoreFactory = RaftCore if planted is None else PLANTED[planted]
        # With members, two spare nodes that join by membership changes
        # (membership_sim.py); their events draw from a random stream of their own.
        self.ids = tuple(range(nodes + (SPARES if members else 0)))
        self.nodes = {i: Node(i) for i in self.ids}
        self.checker = Checker(self._fail)
        self.members = MembershipEvents(self) if members else None
        self.member_checker = MembershipChecker(self._fail)
        self.now = 0
        self.steps = 0
        self.crashes = 0
        self.installs = 0
        self._seq = 0
        self._network: list[tuple[int, int, Message]] = []
        self._group: dict[int, int] = dict.fromkeys(self.ids, 0)
        self._faults_on = True
        self._proposals = 0
        self._live_index: int | None = None
        # Snapshot chunks damaged in transit (one bit flipped, or the checksum
        # field changed), which the receiver must refuse before installing. A
        # random stream of its own: seeds that damage nothing run as before.
        self._damage_rng = random.Random(f"kvraft-sim-damage/{seed}/{nodes}")
        self._damage_snapshots = self._damage_rng.random() < 0.5
        self.chunks_damaged = 0
        # Leadership transfers at random moments: a stream of its own too.
        self._transfer_rng = random.Random(f"kvraft-sim-transfer/{seed}/{nodes}")
        self.profile = replace(
            self.profile, transfer=self._transfer_rng.choice([0.0, 0.02, 0.05, 0.1])
        )
        self.transfers = TransferChecker(self._fail, self.profile.election_timeout_ticks)
        # Read-index reads and process pauses: a stream of their own, so seeds
        # that do neither run as before (reads add heartbeats, which do not).
        self._read_rng = random.Random(f"kvraft-sim-reads/{seed}/{nodes}")
        self._read_rate = self._read_rng.choice([0.0, 0.3, 0.6, 1.0])
        self._pause_rate = self._read_rng.choice([0.0, 0.0, 0.01, 0.03])
        self.pauses = 0
        self.reads = ReadChecker(self._fail, lambda: max(self.checker.committed, default=0))

    # ----------------------------------------------------------------- failing

    def _fail(self, what: str) -> None:
        replay = replay_command(self.seed, self.size, self.planted, self.members is not None)
        raise Violation(
            f"{what}\n  at tick {self.now} (seed {self.seed}, {self.size} nodes, "
            f"{self.profile})\n  replay: {replay}"
        )

    # ------------------------------------------------------------------- nodes

    def _config(self, node: int) -> RaftConfig:
        peers = self.ids if self.members is None else self.members.seed_of(node)
        config = self.profile.raft_config(node, peers, random.Random(self.rng.getrandbits(64)))
        config = replace(config, snapshot_validator=snapshot_decodes)
        if self.members is not None:
            config = replace(config, max_promotion_lag_entries=self.members.promotion_lag)
        return config

    def _start(self, node: Node) -> None:
        state = node.storage.load()
        node.core = self.core_factory(self._config(node.id), state)
        node.seen_commit = node.core.commit_index
        node.leader_checked_term = -1
        node.paused_until = None
        node.was_paused = False
        node.held_reads = 0
        node.app = App()
        if state.snapshot is not None:
            self.checker.restored(node, state.snapshot)
        logger.info(
            "sim: n%d started: term %d, log %d..%d, commit %d",
            node.id,
            node.core.current_term,
            node.core.first_index,
            node.core.last_index,
            node.core.commit_index,
        )
        self._drive(node)

    def add_node(self, node_id: int) -> Node:
        """A new, empty node (a membership change adds it; ``membership_sim``), started."""
        assert node_id not in self.nodes, f"n{node_id} exists"
        node = Node(node_id)
        self.ids = (*self.ids, node_id)
        self.nodes[node_id] = node
        self._group[node_id] = 0
        self.start(node)
        return node

    def start(self, node: Node) -> None:
        self._start(node)

    def crash(self, node: Node, where: str) -> None:
        self._crash(node, where)

    def drive(self, node: Node) -> None:
        self._drive(node)

    def _crash(self, node: Node, where: str) -> None:
        logger.info("sim: n%d crashed %s", node.id, where)
        self.reads.crashed(node.id)
        node.paused_until = None
        node.core = None
        node.writing = None  # lost with the process
        self.crashes += 1

    def _drive(self, node: Node) -> None:
        """The driver loop: take Readies while the disk is free, then let the checker look.

        Like the real driver, a Ready may take ticks to persist; meanwhile the
        core keeps stepping messages and ticking, and the next Ready waits.
        """
        core = node.core
        assert core is not None
        while True:
            # Look before every Ready is performed too: a crash may cut it short.
            self.checker.observe(node)
            if core.role is Role.LEADER:
                self.member_checker.observe_leader(core)
            if node.writing is not None or node.paused_until is not None or not core.has_ready():
                return
            ready = core.ready()
            if ready.entries:
                first = ready.entries[0].index
                if ready.snapshot is not None:
                    prev_term = ready.snapshot.term
                else:
                    known = core.term(first - 1)
                    assert known is not None, (first, core.status())
                    prev_term = known
                self.checker.entries_logged(node.id, ready.entries, prev_term)
            if ready.send_before_persist:  # a leader's: they leave before the disk write
                for msg in ready.messages:
                    self._send(msg)
            if self._faults_on and self.rng.random() < self.profile.slow_disk:
                node.writing = ready
                node.written_at = self.now + self.rng.randint(1, self.profile.max_write_ticks)
                return
            self._perform(node, ready)
            if node.core is None:
                return

    def _perform(self, node: Node, ready: Ready) -> None:
        """One Ready in the durability order; the seed may crash the node between steps."""
        core = node.core
        assert core is not None
        crash = self._faults_on and self.rng.random() < self.profile.crash_in_ready
        where = self.rng.randrange(4) if crash else -1
        if where == 0:
            return self._crash(node, "before persisting a Ready")
        node.storage.save(ready.hard_state, ready.entries, ready.snapshot)
        self._check_persisted(node, ready)
        if where == 1:
            return self._crash(node, "after persisting, before sending")
        if not ready.send_before_persist:
            for msg in ready.messages:
                self._send(msg)
        if where == 2:
            return self._crash(node, "after sending, before applying")
        if ready.snapshot is not None:
            self.installs += 1
            self.checker.restored(node, ready.snapshot)
        for entry in ready.committed:
            self.checker.applied(node, entry)
        self.reads.performed(node.id, ready, node.app.index, node.was_paused)
        if where == 3:
            return self._crash(node, "after applying, before advancing")
        core.advance(ready)
        return None

    def _finish_writes(self) -> None:
        for node in self.nodes.values():
            ready = node.writing
            if ready is not None and node.written_at <= self.now and node.paused_until is None:
                node.writing = None
                self._perform(node, ready)
                if node.core is not None:
                    self._drive(node)

    def _check_persisted(self, node: Node, ready: Ready) -> None:
        """The Ready contract: what is applied and the commit hint are on disk."""
        storage = node.storage
        offset = storage.snapshot.index if storage.snapshot is not None else 0
        last = offset + len(storage.entries)
        if storage.hard_state.commit_index > last:
            self._fail(
                f"n{node.id} persisted commit index {storage.hard_state.commit_index} "
                f"beyond its persisted log (last index {last})"
            )
        for entry in ready.committed:
            if entry.index <= offset:
                continue
            stored = storage.entries[entry.index - offset - 1] if entry.index <= last else None
            if stored != entry:
                self._fail(f"n{node.id} handed out {entry} to apply, but stored {stored}")

    # ----------------------------------------------------------------- network

    def _send(self, msg: Message) -> None:
        profile, rng = self.profile, self.rng
        if isinstance(msg, TimeoutNow):
            self.transfers.timeout_now(msg, self.nodes[msg.dst].storage)
        if self._faults_on and rng.random() < profile.drop:
            return
        msg = self._maybe_damage(msg)
        copies = 2 if self._faults_on and rng.random() < profile.duplicate else 1
        for _ in range(copies):
            self._seq += 1
            if self._faults_on and rng.random() < profile.long_delay:
                due = self.now + rng.randint(5, 40)
            else:
                due = self.now + rng.randint(1, profile.max_delay_ticks)
            heapq.heappush(self._network, (due, self._seq, msg))

    def _maybe_damage(self, msg: Message) -> Message:
        """Some seeds damage a quarter of their snapshot chunks, during the faults."""
        rng = self._damage_rng
        if (
            not self._faults_on
            or not self._damage_snapshots
            or not isinstance(msg, InstallSnapshot)
            or rng.random() >= 0.25
        ):
            return msg
        self.chunks_damaged += 1
        if not msg.data or rng.random() < 0.2:
            return replace(msg, checksum=msg.checksum ^ (1 << rng.randrange(32)))
        data = bytearray(msg.data)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return replace(msg, data=bytes(data))

    def _deliver_due(self) -> None:
        network = self._network
        while network and network[0][0] <= self.now:
            _, _, msg = heapq.heappop(network)
            node = self.nodes.get(msg.dst)
            if node is None or node.core is None:
                continue
            if self._group[msg.src] != self._group[msg.dst]:
                continue
            if node.paused_until is not None:
                # Held in the socket's buffer until the process runs again.
                self._seq += 1
                heapq.heappush(self._network, (node.paused_until, self._seq, msg))
                continue
            self.steps += 1
            node.core.step(msg)
            self._drive(node)

    # ------------------------------------------------------------------ events

    def _random_events(self) -> None:
        profile, rng = self.profile, self.rng
        if rng.random() < profile.partition:
            self._partition()
        if rng.random() < profile.heal and any(self._group.values()):
            logger.info("sim: partition healed")
            self._group = dict.fromkeys(self.ids, 0)
        if rng.random() < profile.crash:
            up = [node for node in self.nodes.values() if node.core is not None]
            # Leaders half the time: their crashes are the interesting ones.
            leaders = [node for node in up if node.core is not None and node.core.leader]
            if up:
                self._crash(rng.choice(leaders if leaders and rng.random() < 0.5 else up), "now")
        if rng.random() < profile.crash_writing:
            writing = [node for node in self.nodes.values() if node.writing is not None]
            if writing:
                self._crash(rng.choice(writing), "in the middle of a write")
        if rng.random() < profile.reboot:
            up = [node for node in self.nodes.values() if node.core is not None]
            # Mostly nodes in the middle of a write: those lose the most.
            writing = [node for node in up if node.writing is not None]
            if up:
                node = rng.choice(writing if writing and rng.random() < 0.7 else up)
                self._crash(node, "to reboot")
                self._start(node)
        if rng.random() < profile.restart:
            down = [node for node in self.nodes.values() if node.core is None]
            if down:
                self._start(rng.choice(down))
        if self._transfer_rng.random() < profile.transfer:
            self._transfer()
        if rng.random() < profile.propose:
            self._propose(rng.randint(1, 3))
        if rng.random() < profile.compact:
            self._compact(rng.choice(list(self.nodes.values())))
        self._reads_and_pauses()
        if self.members is not None:
            self.members.maybe_change()

    def _reads_and_pauses(self) -> None:
        """Now and then pause a node, leaders mostly; ask reads, of leaders mostly."""
        rng = self._read_rng
        up = [node for node in self.nodes.values() if node.core is not None]
        if not up:
            return
        leaders = [node for node in up if node.core is not None and node.core.leader]
        if rng.random() < self._pause_rate:
            node = rng.choice(leaders if leaders and rng.random() < 0.7 else up)
            # Not during a transfer: its checker counts the leader's ticks in real time.
            if (
                node.paused_until is None
                and node.core is not None
                and (node.core.transfer_target is None)
            ):
                ticks = rng.randint(2, 6) * self.profile.election_timeout_ticks
                node.paused_until = self.now + ticks
                node.was_paused = True
                self.pauses += 1
                logger.info("sim: n%d paused for %d ticks", node.id, ticks)
        if rng.random() < self._read_rate:
            node = rng.choice(leaders if leaders and rng.random() < 0.8 else up)
            if node.paused_until is not None:
                node.held_reads += 1  # its client's request waits in the socket
            else:
                self._ask_read(node)

    def _ask_read(self, node: Node) -> None:
        core = node.core
        assert core is not None
        self.reads.ask(node.id, core, self.now)
        self._drive(node)

    def _resume_paused(self) -> None:
        for node in self.nodes.values():
            if node.paused_until is not None and node.paused_until <= self.now:
                node.paused_until = None
                logger.info("sim: n%d resumed", node.id)
                # The requests that arrived meanwhile are read first, then the messages.
                held, node.held_reads = node.held_reads, 0
                for _ in range(held):
                    if node.core is None:  # crashed in the middle of a Ready
                        break
                    self._ask_read(node)
                if node.core is not None:
                    self._drive(node)

    def _transfer(self) -> None:
        """Ask a leader with no transfer running to hand over; now and then, to itself or
        to a stranger, which must be refused with nothing changed."""
        rng = self._transfer_rng
        leaders = [
            node
            for node in self.nodes.values()
            if node.core is not None
            and node.core.role is Role.LEADER
            and node.core.transfer_target is None
            and node.paused_until is None
        ]
        if not leaders:
            return
        node = rng.choice(leaders)
        core = node.core
        assert core is not None
        if rng.random() < 0.1:
            bad = rng.choice([core.id, self.size + 7])
            try:
                core.transfer_leadership(bad)
            except TransferRefused:
                pass
            else:
                self._fail(f"transfer: n{core.id} accepted a transfer to n{bad}")
            if core.transfer_target is not None:
                self._fail(f"transfer: n{core.id} refused n{bad} but started a transfer")
            return
        voters = sorted(core.membership.voters - {core.id})
        if not voters:
            return
        target = rng.choice(voters)
        core.transfer_leadership(target)
        self.transfers.asked(core, target, self.now)
        logger.info("sim: n%d asked to transfer leadership to n%d", core.id, target)
        self._drive(node)

    def _partition(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            alone = rng.choice(self.ids)
            self._group = {i: int(i == alone) for i in self.ids}
        else:
            self._group = {i: rng.randrange(2) for i in self.ids}
        logger.info("sim: partition %s", self._group)

    def _propose(self, count: int) -> None:
        up = [
            node
            for node in self.nodes.values()
            if node.core is not None and node.paused_until is None
        ]
        if not up:
            return
        leaders = [node for node in up if node.core is not None and node.core.role is Role.LEADER]
        node = self.rng.choice(leaders or up)
        core = node.core
        assert core is not None
        if core.last_index - core.commit_index >= MAX_BACKLOG:
            return  # flow control, as clients waiting for their answers would exert
        for _ in range(count):
            self._proposals += 1
            taken = core.propose(f"s{self.seed}-c{self._proposals}".encode())
            if core.role is Role.LEADER:
                self.transfers.proposed(core, taken is not None, self.now)
        self._drive(node)

    def _compact(self, node: Node) -> None:
        core = node.core
        if core is None or node.app.index - core.log.snapshot_index < self.rng.randint(1, 8):
            return
        if node.paused_until is not None:
            return
        index = node.app.index
        term = core.term(index)
        assert term is not None and index <= core.applying_index, (index, core.status())
        # The configuration as of the index goes with it (thesis §4.1), as the
        # real driver stores it: a restart must not fall back to the seed.
        snapshot = Snapshot(
            index,
            term,
            snapshot_data(index, node.app.digest, self.rng.randrange(48)),
            core.config_at(index),
        )
        node.storage.compact(snapshot)
        core.compact(snapshot)

    # ------------------------------------------------------------------- loop

    def _tick(self) -> None:
        self.now += 1
        self._resume_paused()
        self._finish_writes()
        self._deliver_due()
        order = list(self.nodes.values())
        self.rng.shuffle(order)
        for node in order:
            if node.core is not None and node.paused_until is None:
                node.core.tick()
                self._drive(node)

    def run(self) -> Result:
        for node in self.nodes.values():
            self._start(node)
        for _ in range(self.safety_ticks):
            self._random_events()
            self._tick()
        self.checker.logs_match(list(self.nodes.values()))
        liveness = self._liveness()
        self.checker.logs_match(list(self.nodes.values()))
        return Result(
            seed=self.seed,
            nodes=self.size,
            ticks=self.now,
            steps=self.steps,
            leaders=len(self.checker.leader_of_term),
            committed=len(self.checker.committed),
            crashes=self.crashes,
            snapshots_installed=self.installs,
            liveness_ticks=liveness,
            snapshot_chunks_damaged=self.chunks_damaged,
            transfers=self.transfers.transfers,
            transfers_completed=self.transfers.completed(self.checker.leader_of_term),
            timeouts_now_sent=self.transfers.timeouts_sent,
            reads_served=self.reads.served,
            reads_failed=self.reads.failed,
            reads_served_after_pause=self.reads.served_after_pause,
            pauses=self.pauses,
        )

    def _liveness(self) -> int:
        """Heal everything; a leader must get a new command applied everywhere, in bounded time."""
        logger.info("sim: liveness phase: network healed, faults off, every node restarted")
        self._faults_on = False
        self._group = dict.fromkeys(self.ids, 0)
        for node in self.nodes.values():
            if node.core is not None:
                self._crash(node, "for the liveness phase")
            self._start(node)
        start = self.now
        bound = self.liveness_ticks or self._liveness_bound()
        command = f"s{self.seed}-live".encode()
        proposed_in: set[int] = set()
        while self.now - start < bound:
            self._tick()
            for node in self.nodes.values():
                core = node.core
                assert core is not None
                if core.role is Role.LEADER and core.current_term not in proposed_in:
                    proposed_in.add(core.current_term)
                    core.propose(command)
                    self._drive(node)
            index = self._applied_index_of(command)
            if index is not None and all(
                n.app.index >= index for n in self.nodes.values() if self._must_apply(n)
            ):
                return self.now - start
        roles = {i: n.core.status() for i, n in self.nodes.items() if n.core is not None}
        self._fail(
            f"liveness: command not applied on every node {bound} ticks after "
            f"healing the network (proposed in terms {sorted(proposed_in)}); nodes: {roles}"
        )
        raise AssertionError("unreachable")

    def _must_apply(self, node: Node) -> bool:
        """Every node must apply the liveness command, but those no member any more."""
        if self.members is None:
            return True
        leaders = [n.core for n in self.nodes.values() if n.core and n.core.role is Role.LEADER]
        return not leaders or leaders[0].membership.is_member(node.id)

    def _liveness_bound(self) -> int:
        longest = max(node.core.last_index for node in self.nodes.values() if node.core)
        snapshots = [node.storage.snapshot for node in self.nodes.values()]
        biggest = max((len(snap.data) for snap in snapshots if snap is not None), default=0)
        # Commands are at most 16 bytes ("s<seed>-c<n>").
        return self.profile.liveness_bound_ticks(longest, biggest, command_bytes=16)

    def _applied_index_of(self, command: bytes) -> int | None:
        if self._live_index is None:
            for index, (_, cmd, _) in self.checker.committed.items():
                if cmd == command:
                    self._live_index = index
        return self._live_index
