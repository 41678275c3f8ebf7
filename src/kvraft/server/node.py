"""RaftNode: the asyncio driver of one RaftCore, the only owner of time and I/O for Raft.

It ticks the core on a timer, feeds it messages from peers, and runs the one
loop that performs each Ready in the durability order (Raft thesis §3.8, see
:mod:`kvraft.raft.ready`): persist (off the event loop, one fsynced
transaction), then send, then apply, then advance. While a Ready is being
persisted, proposals and messages keep arriving in the core; the next Ready
carries them all, so one fsync commits a whole batch (group commit).

The clock, the transport to peers and the worker threads are parameters
(:mod:`kvraft.server.driver_io`): a server process passes the event loop's
clock, the RPC layer and real threads; the simulator in ``tests/sim`` passes
virtual time, a seeded faulty network and a disk that can die mid-write, so
its seeds exercise this very loop.

The RSM API is the classic one: :meth:`submit`, :meth:`get_committed`,
:meth:`get_state`; plus :meth:`status` for operators,
:meth:`transfer_leadership` (the core's transfer, waited for) and
:meth:`read_index` (a read confirmed without a log entry, Raft thesis §6.4).

For metrics (:mod:`kvraft.server.metrics`) the node keeps plain counters and
timestamps (leader changes, when it last applied) and calls optional hooks
(``on_append_sent``/``on_append_reply``, ``on_snapshot_s``), None unless metrics are on: no
metrics library is imported here, so the simulator runs this loop without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvraft.raft.config import DEFAULT_TICK_INTERVAL_S, RaftConfig
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.membership import Change, Membership
from kvraft.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    Message,
)
from kvraft.raft.ready import PersistentState, Ready, Snapshot
from kvraft.raft.storage import Storage
from kvraft.server.driver_io import Clock, LoopClock, PeerTransport, ThreadWorkers, Workers

log = logging.getLogger("kvraft.node")


class TransferFailed(Exception):
    """A leadership transfer began but did not complete: its target did not take over.

    The core abandoned it after an election timeout (the target is down,
    slow, or lost the election), another node took over, or the caller's
    timeout passed first. The node leads again, or follows whoever won.
    """


class ReadFailed(Exception):
    """A read-index read could not be confirmed: the node stopped leading first."""


# A save slower than this is worth an operator's warning line.
SLOW_SAVE_S = 0.5


@dataclass(frozen=True)
class NodeTiming:
    """Wall-clock settings; the core counts ticks (see RaftConfig for tick counts)."""

    tick_interval_s: float = DEFAULT_TICK_INTERVAL_S


class StateMachine:
    """What the node applies committed entries to (the RSM implements it)."""

    def apply(self, entry: Entry) -> None:
        """Apply one committed entry; called in index order for every entry."""
        raise NotImplementedError

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole state with ``snapshot`` (received from a leader)."""
        raise NotImplementedError

    def capture_snapshot(self) -> Callable[[], bytes]:
        """A consistent view of the state as of the last applied entry, as an encoder.

        Called on the event loop, between applies, so it must be cheap: copy
        references, not data (O(keys) at most). The returned function encodes
        that view into the snapshot bytes; the node calls it in a worker
        thread while this state machine keeps applying entries, so it must
        not read the live state.
        """
        raise NotImplementedError

    def on_role_change(self, term: int, is_leader: bool) -> None:
        """Called after the term or the leadership of this node changed."""


class RaftNode:
    """Drives a :class:`RaftCore` with a clock, a storage, a transport and workers.

    ``core_factory`` builds the core from the loaded state (``RaftCore``; the
    simulator passes cores with planted bugs to test its checkers).
    """

    def __init__(
        self,
        config: RaftConfig,
        storage: Storage,
        transport: PeerTransport,
        state_machine: StateMachine,
        *,
        clock: Clock | None = None,
        workers: Workers | None = None,
        timing: NodeTiming = NodeTiming(),
        snapshot_threshold_bytes: int | None = None,
        core_factory: Callable[[RaftConfig, PersistentState], RaftCore] = RaftCore,
    ) -> None:
        self.id = config.node_id
        self.config = config
        self.storage = storage
        self.transport = transport
        self.state_machine = state_machine
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.workers: Workers = workers if workers is not None else ThreadWorkers(f"n{self.id}")
        self.timing = timing
        self.snapshot_threshold_bytes = snapshot_threshold_bytes
        persisted = storage.load()
        self.core = core_factory(config, persisted)
        if persisted.snapshot is not None:
            state_machine.restore(persisted.snapshot)
        # The configuration last logged, and the nodes last handed to
        # on_members_changed (id -> advertised address; the transport and peer
        # authentication follow them: see _check_members).
        self._members: Membership | None = None
        self._reach: dict[int, str] | None = None
        self._reach_from: tuple[Membership, Membership] | None = None  # (committed, latest)
        self.on_members_changed: Callable[[Mapping[int, str]], None] | None = None
        # The term and vote on disk (as of the last completed save), and whether a
        # save is in progress now: a leader sends heartbeats through a slow save
        # only if its current term and vote are these (see _send_while_saving).
        hard = persisted.hard_state
        self._persisted_vote: tuple[int, int | None] = (hard.current_term, hard.voted_for)
        self._saving = False
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Completed with the exception that killed one of the node's tasks (see start).
        self._failure: asyncio.Future[BaseException] | None = None
        self._running = False
        self._last_role: tuple[int, bool] = (self.core.current_term, False)
        # Invariant: at most one snapshot is being taken (copied, encoded, stored) at a time.
        self._snapshotting = False
        self._snapshot_task: asyncio.Task[None] | None = None
        self.messages_sent = 0
        self._ticks = 0
        self._started: float | None = None  # clock time of start()
        self._last_heard: dict[int, float] = {}
        self._lost_peers: set[int] = set()
        self.messages_received = 0
        # For metrics and /health: leaders seen (a change to a known leader, as
        # etcd counts), and the clock time the applied index last moved (or start).
        self.leader_changes = 0
        self._last_leader: int | None = None
        self.applied_at_s: float | None = None
        # Hooks, None unless metrics are on: each AppendEntries handed to the
        # transport and each AppendEntriesReply received (the peer round trip,
        # timed by kvraft.server.peer_rtt.PeerRoundTrips); on_snapshot_s(copy,
        # encode, write, record): the phases of a snapshot this node took.
        self.on_append_sent: Callable[[AppendEntries], None] | None = None
        self.on_append_reply: Callable[[AppendEntriesReply], None] | None = None
        self.on_snapshot_s: Callable[[float, float, float, float], None] | None = None
        # Read-index reads handed to the core and not yet answered by a Ready:
        # request id -> its future. Ids come from one counter and are never
        # reused (etcd #20418: a retry that reused an id took an old answer).
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._last_read_id = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        """Between start() and stop()/halt(): tasks of the state machine stop when it is not."""
        return self._running

    async def start(self) -> None:
        """Start ticking and the Ready loop."""
        self._check_members()  # connect to the members the log names, not only --peers'
        self._running = True
        self._started = self.clock.now_s()
        self.applied_at_s = self._started
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._tasks = [loop.create_task(self._ready_loop()), loop.create_task(self._ticker())]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)
        self._wakeup.set()

    async def wait_failed(self) -> BaseException:
        """Wait until the node fails (a storage write failed, or a bug); the exception.

        A node that cannot persist must stop (fail-stop): going on would
        acknowledge what is not on disk, and silently not going on would leave a
        process that answers nothing. The server process exits when this returns.
        """
        assert self._failure is not None, "start() first"
        return await asyncio.shield(self._failure)

    def failure(self) -> BaseException | None:
        """The exception that stopped the node, if one did (see :meth:`wait_failed`)."""
        if self._failure is None or not self._failure.done():
            return None
        return self._failure.result()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.critical(
            "n%d [term %d] failed at index %d, stopping: %s",
            self.id,
            self.core.current_term,
            self.core.last_index,
            exc,
            exc_info=exc,
        )
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(exc)

    async def stop(self) -> None:
        """Stop the loops, close peer connections and storage."""
        for task in self.halt():
            # A task that failed was reported by _on_task_done already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.transport.close()
        await self.workers.storage(self.storage.close)
        # An encoding still running is abandoned: its snapshot would never be stored.
        # A snapshot file still being written stops (storage.close told it to) or is
        # left unrecorded, which the next open deletes.
        self.workers.shutdown()

    def halt(self) -> list[asyncio.Task[None]]:
        """Stop at once, as a killed process would: cancel the loops and any snapshot.

        Nothing is closed or flushed: the storage keeps exactly what its
        completed calls saved, and a call still waiting for its worker is lost.
        :meth:`stop` is this plus an orderly close; the simulator calls this
        alone to crash a node at any instant. Returns the cancelled tasks.
        """
        self._running = False
        tasks = list(self._tasks)
        if self._snapshot_task is not None:
            tasks.append(self._snapshot_task)
        for task in tasks:
            task.cancel()
        return tasks

    @property
    def peers(self) -> tuple[int, ...]:
        """The other members of the latest configuration, voters and learners."""
        return tuple(p for p in self.core.peers if p != self.id)

    def _check_members(self) -> None:
        """Log a new configuration, and tell on_members_changed whom to talk to now.

        The core changes its configuration when it appends (or truncates) a
        configuration entry (thesis §4.1), inside propose_change or step:
        checked before each Ready is performed, so a new member has a
        connection before the first message to it is sent. The nodes to talk
        to are the members of the latest configuration *and* of the latest
        committed one: a leader that is removing itself (§4.2.2) is no member
        of the configuration its followers appended, but it still replicates
        that entry, and their acknowledgements must reach it, until it commits.
        """
        core = self.core
        config = core.membership
        if config is not self._members:
            previous, self._members = self._members, config
            if previous is None or not previous.same_as(config):
                log.info(
                    "n%d [term %d] configuration: %s at index %d",
                    self.id,
                    core.current_term,
                    config.describe(),
                    core.config_log.latest_index,
                )
        committed = core.config_at(core.commit_index)
        if self._reach_from is not None and (
            self._reach_from[0] is committed and self._reach_from[1] is config
        ):
            return  # the common case, checked before every Ready: nothing to build
        self._reach_from = (committed, config)
        reach = {m: committed.address(m) for m in committed.members}
        reach.update((m, config.address(m)) for m in config.members)
        if reach == self._reach:
            return
        self._reach = reach
        if self.on_members_changed is not None:
            self.on_members_changed(reach)

    def propose_change(self, change: Change) -> tuple[int, int]:
        """As leader, propose a membership change: ``(index, term)``; ChangeRefused says why."""
        result = self.core.propose_change(change)
        self._check_members()
        self._wakeup.set()
        return result

    # ------------------------------------------------------------------- RSM API

    def submit(self, command: bytes) -> tuple[int, int] | None:
        """Append ``command`` to the log if leader: ``(index, term)``, else None."""
        result = self.core.propose(command)
        if result is not None:
            self._wakeup.set()
        return result

    def get_committed(self, index: int) -> bytes | None:
        """The command committed at ``index``, or None if not (yet) committed or compacted.

        The no-op a leader appends at the start of its term reads as ``b""``.
        """
        if index > self.core.commit_index:
            return None
        entry = self.core.entry(index)
        if entry is None:
            return None
        return entry.command if entry.command is not None else b""

    def read_index(self) -> asyncio.Future[int] | None:
        """As leader, ask for a read index (Raft thesis §6.4); None if not leader.

        The future resolves to the index once a majority confirmed this node
        still led after the call, in the Ready whose committed entries the
        state machine applied just before (so it has applied the index unless
        a snapshot restore intervened); it fails with :class:`ReadFailed` if
        the node stops leading first. Cancelling it is fine: the core still
        answers the id, which is then dropped.
        """
        self._last_read_id += 1
        request_id = self._last_read_id
        if not self.core.read_index(request_id):
            return None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[request_id] = future
        self._wakeup.set()
        return future

    @property
    def pending_reads(self) -> int:
        """Read-index reads asked for and not yet answered by the core (cancelled included)."""
        return len(self._reads)

    def campaign(self) -> None:
        """Start an election now (operators' and tests' hook; Raft would in time)."""
        self.core.campaign()
        self._wakeup.set()

    @property
    def election_timeout_s(self) -> float:
        """The election timeout in seconds: what a transfer gets before it is abandoned."""
        return self.config.election_timeout_ticks * self.timing.tick_interval_s

    def transfer_candidate(self) -> int | None:
        """As leader, the follower to hand leadership to: the most up to date; else None.

        The highest match index (its log is the leader's longest prefix, so it
        catches up soonest), then the most recently heard from (alive).
        """
        leader = self.core.leader
        if leader is None or not leader.progress:
            return None
        heard = self._last_heard
        return max(
            leader.progress,
            key=lambda peer: (leader.progress[peer].match_index, heard.get(peer, 0.0), -peer),
        )

    async def transfer_leadership(self, target: int, timeout_s: float) -> float:
        """Hand leadership to peer ``target``; the seconds it took, once ``target`` leads.

        The core stops taking proposals (the RSM answers NotLeader, clients
        retry at the new leader), catches ``target`` up and sends it
        TimeoutNow (see :mod:`kvraft.raft.transfer`). Resolves when this node
        follows ``target``. Raises ``TransferRefused`` at once when not leader
        or for a target that is this node or not a peer; :class:`TransferFailed`
        when the core abandoned the transfer (one election timeout), someone
        else took over, the node stopped, or ``timeout_s`` passed.
        """
        core, clock = self.core, self.clock
        core.transfer_leadership(target)  # TransferRefused, nothing changed
        term = core.current_term
        self._wakeup.set()
        started = clock.now_s()
        deadline = started + timeout_s
        while True:
            now = clock.now_s()
            if core.role is not Role.LEADER and core.leader_id is not None:
                if core.leader_id != target:
                    raise TransferFailed(
                        f"n{self.id}: n{core.leader_id} took over at term "
                        f"{core.current_term}, not n{target}"
                    )
                log.info(
                    "n%d [term %d] handed leadership to n%d in %.0f ms at index %d",
                    self.id,
                    core.current_term,
                    target,
                    (now - started) * 1000,
                    core.last_index,
                )
                return now - started
            if core.role is Role.LEADER and (
                core.current_term != term or core.transfer_target != target
            ):
                raise TransferFailed(
                    f"n{self.id}: abandoned the transfer to n{target} after an election "
                    f"timeout ({self.election_timeout_s * 1000:.0f} ms): it did not take over"
                )
            if not self._running:
                raise TransferFailed(f"n{self.id}: stopped during the transfer to n{target}")
            if now >= deadline:
                raise TransferFailed(
                    f"n{self.id}: n{target} did not take over within {timeout_s:g} s"
                )
            # Polled each tick: the core changes role only in step() and tick().
            await clock.sleep_s(min(self.timing.tick_interval_s, deadline - now))

    def get_state(self) -> tuple[int, bool]:
        """``(current_term, is_leader)``."""
        return self.core.current_term, self.core.role is Role.LEADER

    def status(self) -> dict[str, Any]:
        """The core's status plus driver counters, for ``kvraft status``."""
        status = dict(self.core.status())
        status["role"] = self.core.role.name.lower()
        status["log_length"] = self.core.last_index - self.core.first_index + 1
        snapshot = self.core.snapshot
        status["snapshot_bytes"] = len(snapshot.data) if snapshot is not None else 0
        status["storage_bytes"] = self.storage.size_bytes()
        status["messages_sent"] = self.messages_sent
        status["messages_received"] = self.messages_received
        return status

    # ------------------------------------------------------------------ network

    def receive(self, sender_peer: int | None, message: Any) -> None:
        """A Raft message from the network; anything malformed or spoofed is dropped."""
        if not isinstance(message, MESSAGE_TYPES) or sender_peer is None:
            log.debug("n%d dropped a non-Raft message from %s", self.id, sender_peer)
            return
        if message.src != sender_peer or message.dst != self.id:
            log.debug("n%d dropped a misaddressed %s", self.id, type(message).__name__)
            return
        self.messages_received += 1
        self._last_heard[sender_peer] = self.clock.now_s()
        if sender_peer in self._lost_peers:
            self._lost_peers.discard(sender_peer)
            log.info(
                "n%d [term %d] peer n%d is back at index %d",
                self.id,
                self.core.current_term,
                sender_peer,
                self.core.last_index,
            )
        if self.on_append_reply is not None and type(message) is AppendEntriesReply:
            self.on_append_reply(message)
        self.core.step(message)
        self._wakeup.set()

    def _check_peers(self) -> None:
        """As leader, log each follower that falls silent (and, in receive, its return).

        Only a leader hears from every peer, so only a leader can tell.
        """
        if self.core.role is not Role.LEADER:
            self._lost_peers.clear()
            return
        silent_s = 2 * self.config.election_timeout_ticks * self.timing.tick_interval_s
        now = self.clock.now_s()
        started = self._started if self._started is not None else now
        for peer in self.peers:
            heard = self._last_heard.get(peer, started)
            if peer not in self._lost_peers and now - heard > silent_s:
                self._lost_peers.add(peer)
                log.info(
                    "n%d [term %d] lost contact with n%d (silent for %.1f s) at index %d",
                    self.id,
                    self.core.current_term,
                    peer,
                    now - heard,
                    self.core.last_index,
                )

    def _send_all(self, messages: list[Message]) -> None:
        on_append_sent = self.on_append_sent
        for message in messages:
            if self.transport.send(message):
                self.messages_sent += 1
                if on_append_sent is not None and type(message) is AppendEntries:
                    on_append_sent(message)

    # --------------------------------------------------------------------- loops

    async def _ticker(self) -> None:
        interval = self.timing.tick_interval_s
        clock = self.clock
        next_tick = clock.now_s() + interval
        while self._running:
            await clock.sleep_s(next_tick - clock.now_s())
            next_tick += interval
            if next_tick < clock.now_s():  # fell behind (GC, load): don't burst-tick
                next_tick = clock.now_s() + interval
            self.core.tick()
            self._ticks += 1
            if self._ticks % 10 == 0:
                self._check_peers()
            self._send_while_saving()
            self._wakeup.set()

    def _send_while_saving(self) -> None:
        """As a leader whose term and vote are on disk, send now what a tick queued.

        While the Ready loop waits for a save, the next Ready waits too; a
        leader's heartbeats depend on nothing unpersisted, so they need not:
        a save slower than the election timeout must not depose a healthy
        leader (Raft thesis §10.2.1; the core's ``take_messages``).
        """
        core = self.core
        if (
            self._saving
            and core.role is Role.LEADER
            and (core.current_term, core.voted_for) == self._persisted_vote
        ):
            self._send_all(core.take_messages())

    async def _ready_loop(self) -> None:
        while self._running:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.core.has_ready():
                ready = self.core.ready()
                self._check_members()
                await self._perform(ready)
                self._notify_role_change()
                # Here too, not only once the loop drains: a steady load faster than
                # fsync keeps it from draining, and the log would grow unbounded.
                self._maybe_snapshot()
            self._notify_role_change()
            self._maybe_snapshot()

    async def _perform(self, ready: Ready) -> None:
        """One Ready, in the durability order of :mod:`kvraft.raft.ready`: the one place."""
        # A leader's messages depend on nothing this Ready persists: they leave
        # now, and its own fsync overlaps the followers' (thesis §10.2.1).
        if ready.send_before_persist:
            self._send_all(ready.messages)
        # 1. Persist first: a vote, a term, or an acknowledged entry must be on
        #    disk before any message that depends on it leaves (thesis §3.8).
        if ready.hard_state is not None or ready.entries or ready.snapshot is not None:
            started = self.clock.now_s()
            self._saving = True
            try:
                await self.workers.storage(
                    self.storage.save, ready.hard_state, ready.entries, ready.snapshot
                )
            finally:
                self._saving = False
            if ready.hard_state is not None:
                self._persisted_vote = (ready.hard_state.current_term, ready.hard_state.voted_for)
            elapsed = self.clock.now_s() - started
            if elapsed > SLOW_SAVE_S:
                log.warning(
                    "n%d [term %d] slow fsync: %.0f ms at index %d",
                    self.id,
                    self.core.current_term,
                    elapsed * 1000,
                    self.core.last_index,
                )
        # 2. Send.
        if not ready.send_before_persist:
            self._send_all(ready.messages)
        # 3. Apply, in index order.
        if ready.snapshot is not None:
            self.state_machine.restore(ready.snapshot)
        for entry in ready.committed:
            self.state_machine.apply(entry)
        if ready.committed or ready.snapshot is not None:
            self.applied_at_s = self.clock.now_s()  # one clock read per Ready, for /health
        #    Then the reads this Ready confirmed, after the entries up to their index.
        if ready.reads or ready.failed_reads:
            self._answer_reads(ready)
        # 4. Advance.
        self.core.advance(ready)

    def _answer_reads(self, ready: Ready) -> None:
        reads = self._reads
        for read in ready.reads:
            future = reads.pop(read.request_id, None)
            if future is not None and not future.done():
                future.set_result(read.index)
        for request_id in ready.failed_reads:
            future = reads.pop(request_id, None)
            if future is not None and not future.done():
                future.set_exception(
                    ReadFailed(f"n{self.id} stopped leading at term {self.core.current_term}")
                )

    def _notify_role_change(self) -> None:
        leader = self.core.leader_id
        if leader != self._last_leader:
            self._last_leader = leader
            if leader is not None:
                self.leader_changes += 1
        now = self.get_state()
        if now != self._last_role:
            self._last_role = now
            self.state_machine.on_role_change(*now)

    # ----------------------------------------------------------------- snapshots
    #
    # A snapshot is taken in five steps, so that the event loop (which applies
    # entries and answers clients) only does the cheap one, and the storage
    # thread (which persists every Ready) only a small transaction:
    #   1. on the loop: capture a consistent copy of the state at applying_index;
    #   2. encoder thread: encode it;
    #   3. encoder thread: write it to its own file (storage.stage_snapshot),
    #      while Readys keep being saved;
    #   4. storage thread: record it (one small transaction; the log rows up to it
    #      are dead from then on, deleted a batch per later save);
    #   5. on the loop: drop the core's in-memory prefix.
    # Meanwhile entries keep being applied and a leader's InstallSnapshot may
    # replace the log; a snapshot that no longer matches the log is skipped.

    def _maybe_snapshot(self) -> None:
        threshold = self.snapshot_threshold_bytes
        if threshold is None or self._snapshotting:
            return
        # The log, not the whole storage, is what passes the threshold: counting
        # the snapshot too, every batch would pass it again right after a snapshot
        # once the data nears it. Not the snapshot's size either: every entry until
        # the next snapshot is also held in memory by the core (~300 B per 100-byte
        # put), so a log as large as the data (the rule before) cost a large store
        # about as much memory again as the store itself (benchmarks/results/memory.md).
        # A quarter of the snapshot at least, so a store much larger than the
        # threshold is not rewritten more than 4 times per its size in log.
        # The storage stays under data + max(threshold, data / 4) plus slack.
        held = self.core.snapshot
        held_bytes = len(held.data) if held is not None else 0
        if self.storage.size_bytes() - held_bytes < max(threshold, held_bytes // 4):
            return
        index = self.core.applying_index
        entry = self.core.entry(index)
        if entry is None:  # already compacted up to applied
            return
        started = self.clock.now_s()
        encode = self.state_machine.capture_snapshot()
        # The configuration as of the index goes with the snapshot (thesis §4.1).
        config = self.core.config_at(index)
        copy_s = self.clock.now_s() - started
        self._snapshotting = True
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._take_snapshot(index, entry.term, encode, copy_s, config)
        )
        self._snapshot_task.add_done_callback(self._on_task_done)

    def _matches_log(self, index: int, term: int) -> bool:
        """Whether a snapshot at ``(index, term)`` still compacts the core's log.

        False once the log was replaced by a snapshot at or past ``index``
        (an InstallSnapshot while ours was being taken), or if the log's term
        at ``index`` is not ``term``.
        """
        return index >= self.core.first_index and self.core.term(index) == term

    async def _take_snapshot(
        self,
        index: int,
        term: int,
        encode: Callable[[], bytes],
        copy_s: float,
        config: Membership | None = None,
    ) -> None:
        clock, workers = self.clock, self.workers
        try:
            started = clock.now_s()
            data = await workers.encode(encode)
            encoded = clock.now_s()
            snapshot = Snapshot(index, term, data, config)
            if not self._matches_log(index, term):
                log.info("n%d skipped its snapshot at index %d: log replaced", self.id, index)
                return
            await workers.encode(self.storage.stage_snapshot, snapshot)
            written = clock.now_s()
            # Called even if the log was replaced meanwhile: compact then discards the file.
            await workers.storage(self._persist_snapshot, snapshot)
            stored = clock.now_s()
            if not self._matches_log(index, term):
                # The storage ignored it too if an installed snapshot is at or past it.
                log.info("n%d skipped its snapshot at index %d: log replaced", self.id, index)
                return
            self.core.compact(snapshot)
            if self.on_snapshot_s is not None:
                self.on_snapshot_s(copy_s, encoded - started, written - encoded, stored - written)
            log.info(
                "n%d [term %d] snapshot at index %d (%d bytes) in %.0f ms"
                " (copy %.1f ms on the loop, encode %.0f ms, write %.0f ms, record %.0f ms)",
                self.id,
                self.core.current_term,
                index,
                len(data),
                (stored - started + copy_s) * 1000,
                copy_s * 1000,
                (encoded - started) * 1000,
                (written - encoded) * 1000,
                (stored - written) * 1000,
            )
        finally:
            self._snapshotting = False

    def _persist_snapshot(self, snapshot: Snapshot) -> None:
        """Storage thread: store ``snapshot`` and drop the log up to it, or nothing.

        SqliteStorage ignores a snapshot at or below the stored one and refuses
        (ValueError, nothing written) one whose term disagrees with its log:
        both mean the log was replaced since the snapshot was captured.
        """
        try:
            self.storage.compact(snapshot)
        except ValueError as exc:
            log.info("n%d skipped its snapshot at index %d: %s", self.id, snapshot.index, exc)
