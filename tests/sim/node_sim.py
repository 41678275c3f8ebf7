"""A deterministic simulator of real RaftNodes: the production driver under seeded faults.

``simulator.py`` drives bare RaftCores with a loop of its own; this one runs
the code a server process runs — :class:`~kvraft.server.node.RaftNode` (its
Ready loop, early send, persist, send, apply, advance and the snapshot
steps), the real :class:`~kvraft.server.rsm.RSM` over a real
:class:`~kvraft.server.kvstore.KVStore` — with only the world replaced, through
the node's own parameters (:mod:`kvraft.server.driver_io`):

- time is a :class:`~tests.sim.virtual_loop.VirtualTimeLoop`: the node's
  ticker, the RSM's timeouts and every delay run on virtual seconds;
- the network (:class:`SimTransport`) drops, duplicates, delays (so
  reorders) and partitions messages as the seed says;
- the disk (:class:`SimDisk`, the node's ``Workers``) runs storage calls on
  :class:`~kvraft.raft.storage.MemoryStorage`, the in-memory twin of the
  SQLite storage, after a delay; a node crashed while a write waits loses it.

A crash is :meth:`RaftNode.halt` at any instant: the storage keeps what was
saved, nothing else survives; a restart builds a new node and RSM from that
storage. Clients submit gets and versioned puts through the RSM of the node
that leads, and their history, with virtual call and return times, must be
linearizable. The :class:`~tests.sim.simulator.Checker` of the core simulator
watches every node (election safety, log matching, leader completeness,
state machine safety, now on KV states), plus the Ready contract as the
driver performs it: an entry is applied only once it is on this node's disk.

A run has a safety phase (faults on), then a liveness phase (network healed,
faults off, every node restarted: a put must be applied by every node within
a bound). A violation raises :class:`~tests.sim.simulator.Violation` ending
with the one command that replays the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from kvraft.errors import Busy, NotLeader, WrongLeader
from kvraft.kv_protocol import (
    FIRST_REQUEST_ID,
    GetOk,
    GetOp,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    SessionExpiredResult,
    VersionMismatchResult,
)
from kvraft.raft.core import Role
from kvraft.raft.messages import InstallSnapshot, Message, TimeoutNow
from kvraft.server.driver_io import LoopClock
from kvraft.server.node import NodeTiming, RaftNode, TransferFailed
from kvraft.server.process import snapshot_decodes
from kvraft.server.sessions import SessionLimits
from kvraft.testing.history import Operation, Outcome
from kvraft.testing.linearizability import check

from .node_world import ObservedRSM, ObservedStorage, SimDisk, SimNode, SimTransport
from .planted import PLANTED, PLANTED_DRIVERS
from .simulator import Checker, Profile, Violation
from .transfer_check import TransferChecker
from .virtual_loop import VirtualTimeLoop

logger = logging.getLogger("kvraft.sim")

REPLAY_COMMAND = ".venv/bin/python -m tests.sim.replay --driver node --seed {seed} --nodes {nodes}"

TICK_S = 0.010  # virtual seconds per Raft tick, as a server's default
KEYS = ("a", "b", "c", "d")
# Every write takes this long at least (a real fsync is never instant), so a
# message sent before its write always has a window in which a crash loses it.
MIN_WRITE_S = 0.0005
# Client operations wait while a leader has this many entries not yet applied.
MAX_BACKLOG = 24
# Sequential clients, each with a session, doing one operation at a time.
CLIENTS = 8


def replay_command(seed: int, nodes: int, planted: str | None = None) -> str:
    command = REPLAY_COMMAND.format(seed=seed, nodes=nodes)
    return command if planted is None else f"{command} --planted {planted}"


# ------------------------------------------------------------------ clients


@dataclass
class SimClient:
    """One sequential client: its session id, its next request id, whether an op runs."""

    name: str
    session_id: str
    next_rid: int = FIRST_REQUEST_ID
    generation: int = 0
    busy: bool = False

    def renew(self) -> None:
        """The cluster forgot the session: start another, numbered from the start."""
        self.generation += 1
        self.session_id = f"{self.name}.{self.generation}"
        self.next_rid = FIRST_REQUEST_ID


# ------------------------------------------------------------------ results


@dataclass
class NodeResult:
    seed: int
    nodes: int
    leaders: int
    committed: int
    crashes: int
    snapshots_installed: int
    snapshots_taken: int
    operations: int
    acknowledged: int
    liveness_ticks: int
    snapshot_chunks_damaged: int
    # Operations answered after a retry of unknown outcome (what sessions are for),
    # and sessions the cluster forgot that a client then renewed.
    answered_after_retry: int
    sessions_renewed: int
    # Leadership transfers asked of leaders through RaftNode.transfer_leadership, those
    # that resolved (the target led a later term), and the TimeoutNow messages sent.
    transfers: int = 0
    transfers_completed: int = 0
    timeouts_now_sent: int = 0


# --------------------------------------------------------------- simulation


class NodeSimulation:
    """One seeded run of real nodes; :meth:`run` raises Violation or returns a summary."""

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        *,
        safety_ticks: int = 200,
        planted: str | None = None,
    ) -> None:
        self.seed = seed
        self.size = nodes
        self.rng = random.Random(f"kvraft-node-sim/{seed}/{nodes}")
        self.profile = Profile.pick(self.rng)
        self.snapshot_threshold_bytes = self.rng.choice([None, 400, 1500, 6000])
        self.op_timeout_s = self.rng.choice([10, 30]) * TICK_S
        self.safety_ticks = safety_ticks
        self.planted = planted
        self.node_class: type[RaftNode] = (
            RaftNode if planted is None or planted in PLANTED else PLANTED_DRIVERS[planted]
        )
        self.core_factory = PLANTED.get(planted) if planted is not None else None
        self.ids = tuple(range(nodes))
        self.checker = Checker(self.fail)
        self.nodes = {i: SimNode(i, ObservedStorage(i, self.checker, self.fail)) for i in self.ids}
        self.crashes = 0
        self.installs = 0
        self._group: dict[int, int] = dict.fromkeys(self.ids, 0)
        self._faults_on = True
        self._ops: dict[int, Operation | tuple[Op, float]] = {}
        self._numbers = 0
        self.answered_after_retry = 0
        self._clients = [SimClient(f"c{i}", f"c{i}") for i in range(CLIENTS)]
        self._client_tasks: dict[asyncio.Task[None], None] = {}
        # Drawn last, so the rest of a seed's world is as it was before sessions. Small
        # limits make sessions be evicted and expire mid-run (identically on every node).
        self.session_limits = self.rng.choice(
            [SessionLimits(), SessionLimits(max_sessions=3, expiry_entries=40)]
        )
        self._versions: dict[str, int] = {}
        self._loop: VirtualTimeLoop | None = None
        self._failure: Violation | None = None
        # Snapshot chunks damaged in transit (one bit flipped), which the
        # receiver's checksum must catch before its core installs them. A random
        # stream of its own: the seeds that damage nothing run exactly as before.
        self._damage_rng = random.Random(f"kvraft-node-sim-damage/{seed}/{nodes}")
        self._damage_snapshots = self._damage_rng.random() < 0.5
        self.snapshot_chunks_damaged = 0
        # Leadership transfers at random moments, through the driver: a stream of its own.
        self._transfer_rng = random.Random(f"kvraft-node-sim-transfer/{seed}/{nodes}")
        self.profile = replace(
            self.profile, transfer=self._transfer_rng.choice([0.0, 0.02, 0.05, 0.1])
        )
        self.transfers = TransferChecker(self.fail, self.profile.election_timeout_ticks)
        self.transfers_completed = 0

    # ----------------------------------------------------------------- failing

    def replay_command(self) -> str:
        """The command that replays this run (a subclass names its own driver)."""
        return replay_command(self.seed, self.size, self.planted)

    def fail(self, what: str) -> None:
        violation = Violation(
            f"{what}\n  at {self.now_s():.4f} s (seed {self.seed}, {self.size} nodes, "
            f"snapshot threshold {self.snapshot_threshold_bytes}, {self.session_limits}, "
            f"{self.profile})\n"
            f"  replay: {self.replay_command()}"
        )
        # Raised here, and kept: a check inside a node's task would only end that task.
        if self._failure is None:
            self._failure = violation
        raise violation

    def now_s(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    @property
    def ticks(self) -> int:
        return round(self.now_s() / TICK_S)

    # ------------------------------------------------------------------ world

    def write_delay_s(self) -> float:
        profile = self.profile
        if self._faults_on and self.rng.random() < profile.slow_disk:
            return self.rng.uniform(0.1, profile.max_write_ticks) * TICK_S
        return MIN_WRITE_S

    def network_send(self, message: Message) -> bool:
        profile, rng = self.profile, self.rng
        loop = self._loop
        assert loop is not None
        if isinstance(message, TimeoutNow):
            self.transfers.timeout_now(message, self.nodes[message.dst].storage)
        if self._faults_on and rng.random() < profile.drop:
            return True  # lost on the way
        message = self._maybe_damage(message)
        copies = 2 if self._faults_on and rng.random() < profile.duplicate else 1
        for _ in range(copies):
            if self._faults_on and rng.random() < profile.long_delay:
                delay = rng.uniform(5, 40) * TICK_S
            else:
                delay = rng.uniform(0.2, profile.max_delay_ticks) * TICK_S
            loop.call_later(delay, self._deliver, message)
        return True

    def _maybe_damage(self, message: Message) -> Message:
        """Some seeds flip one bit of a quarter of their snapshot chunks, during the faults."""
        rng = self._damage_rng
        if (
            not self._faults_on
            or not self._damage_snapshots
            or not isinstance(message, InstallSnapshot)
            or not message.data
            or rng.random() >= 0.25
        ):
            return message
        data = bytearray(message.data)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        self.snapshot_chunks_damaged += 1
        return replace(message, data=bytes(data))

    def _deliver(self, message: Message) -> None:
        target = self.nodes.get(message.dst)
        if target is None or target.node is None:
            return
        if self._group[message.src] != self._group[message.dst]:
            return
        target.node.receive(message.src, message)
        self._observe(target)

    def _observe(self, sim_node: SimNode) -> None:
        if sim_node.node is not None:
            self.checker.observe(sim_node)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ nodes

    async def _start(self, sim_node: SimNode) -> None:
        assert sim_node.node is None
        rsm = self._new_rsm(sim_node)
        disk = SimDisk(self)
        extra = {} if self.core_factory is None else {"core_factory": self.core_factory}
        config = self.profile.raft_config(
            sim_node.id, self.ids, random.Random(self.rng.getrandbits(64))
        )
        node = self.node_class(
            # The server's own check that a received snapshot decodes.
            replace(config, snapshot_validator=snapshot_decodes),
            sim_node.storage,
            SimTransport(self),
            rsm,
            clock=LoopClock(),
            workers=disk,
            timing=NodeTiming(tick_interval_s=TICK_S),
            snapshot_threshold_bytes=self.snapshot_threshold_bytes,
            **extra,
        )
        rsm.attach(node)
        sim_node.node, sim_node.rsm, sim_node.disk = node, rsm, disk
        sim_node.seen_commit = node.core.commit_index
        sim_node.leader_checked_term = -1
        logger.info(
            "sim: n%d started: term %d, log %d..%d, commit %d",
            sim_node.id,
            node.core.current_term,
            node.core.first_index,
            node.core.last_index,
            node.core.commit_index,
        )
        await node.start()

    def _new_rsm(self, sim_node: SimNode) -> ObservedRSM:
        """The state machine of a node starting (a subclass may plant a part of it)."""
        return ObservedRSM(self, sim_node)

    def _crash(self, sim_node: SimNode, where: str) -> None:
        node = sim_node.node
        if node is None:
            return
        logger.info("sim: n%d crashed %s", sim_node.id, where)
        node.halt()
        for task in sim_node.clients:
            task.cancel()  # its caller hears nothing: the outcome is unknown
        sim_node.node = sim_node.rsm = sim_node.disk = None
        self.crashes += 1

    def _up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.node is not None]

    def _leaders(self) -> list[SimNode]:
        return [n for n in self._up() if n.node is not None and n.node.get_state()[1]]

    # ----------------------------------------------------------------- events

    async def _random_events(self) -> None:
        profile, rng = self.profile, self.rng
        loop = self._loop
        assert loop is not None
        if rng.random() < profile.partition:
            self._partition()
        if rng.random() < profile.heal and any(self._group.values()):
            logger.info("sim: partition healed")
            self._group = dict.fromkeys(self.ids, 0)
        if rng.random() < profile.crash:
            up, leaders = self._up(), self._leaders()
            if up:
                # Leaders half the time; at any instant within the coming tick.
                victim = rng.choice(leaders if leaders and rng.random() < 0.5 else up)
                loop.call_later(rng.uniform(0, TICK_S), self._crash, victim, "now")
        if rng.random() < profile.crash_writing:
            writing = [n for n in self._up() if n.disk is not None and n.disk.busy]
            if writing:
                self._crash(rng.choice(writing), "in the middle of a write")
        if rng.random() < profile.reboot:
            up = self._up()
            writing = [n for n in up if n.disk is not None and n.disk.busy]
            if up:
                victim = rng.choice(writing if writing and rng.random() < 0.7 else up)
                self._crash(victim, "to reboot")
                await self._start(victim)
        if rng.random() < profile.restart:
            down = [n for n in self.nodes.values() if n.node is None]
            if down:
                await self._start(rng.choice(down))
        if self._transfer_rng.random() < profile.transfer:
            self._transfer()
        if rng.random() < profile.propose:
            for _ in range(rng.randint(1, 3)):
                self._client_operation()

    def _transfer(self) -> None:
        """Ask a leader with no transfer running to hand over, through RaftNode's driver
        method, as the admin RPC and SIGTERM do; when it resolves, its target must have
        led a later term."""
        rng = self._transfer_rng
        leaders = [
            n for n in self._leaders() if n.core is not None and n.core.transfer_target is None
        ]
        if not leaders:
            return
        sim_node = rng.choice(leaders)
        node = sim_node.node
        assert node is not None
        core = node.core
        target = rng.choice([peer for peer in self.ids if peer != sim_node.id])

        async def transfer() -> None:
            # Its first step runs later than this call: check again, then ask at once
            # (transfer_leadership calls the core before its first await).
            if node.core.role is not Role.LEADER or core.transfer_target is not None:
                return
            term = core.current_term
            self.transfers.asked(core, target, self.ticks)
            logger.info("sim: n%d asked to transfer leadership to n%d", sim_node.id, target)
            try:
                await node.transfer_leadership(target, 3 * node.election_timeout_s)
            except TransferFailed:
                return
            won = [t for t, leader in self.checker.leader_of_term.items() if leader == target]
            if not any(t > term for t in won):
                self.fail(
                    f"transfer: n{sim_node.id}'s transfer to n{target} resolved, but n{target} "
                    f"led no term after {term} (terms it led: {sorted(won)})"
                )
            self.transfers_completed += 1

        task = asyncio.get_running_loop().create_task(transfer())
        sim_node.clients[task] = None  # cancelled if the node crashes
        task.add_done_callback(lambda done: sim_node.clients.pop(done, None))

    def _partition(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            alone = rng.choice(self.ids)
            self._group = {i: int(i == alone) for i in self.ids}
        else:
            self._group = {i: rng.randrange(2) for i in self.ids}
        logger.info("sim: partition %s", self._group)

    # ---------------------------------------------------------------- clients

    def _client_operation(self) -> None:
        """Start one get or versioned put by an idle client of the pool."""
        idle = [c for c in self._clients if not c.busy]
        if not idle or not self._leaders():
            return
        client = self.rng.choice(idle)
        client.busy = True
        number = self._numbers
        self._numbers += 1
        key = self.rng.choice(KEYS)
        if self.rng.random() < 0.4:
            make: Callable[[str, int], Op] = lambda cid, rid: GetOp(key, cid, rid, rid)  # noqa: E731
        else:
            known = self._versions.get(key, 0)
            version = known if self.rng.random() < 0.8 else self.rng.randrange(4)
            value = f"v{number}"

            def make(cid: str, rid: int) -> Op:
                return PutOp(key, value, version, cid, rid, rid)

        op = make(client.session_id, client.next_rid)
        self._ops[number] = (op, self.now_s())
        # The client's own task: it outlives a crash of the node it is talking to.
        task = asyncio.get_running_loop().create_task(self._run_operation(client, number, make))
        self._client_tasks[task] = None
        task.add_done_callback(lambda done: self._client_tasks.pop(done, None))

    async def _run_operation(
        self, client: SimClient, number: int, make: Callable[[str, int], Op]
    ) -> None:
        """Send the op until it is answered, every attempt with the same (client, request id).

        A sequential client: each op acknowledges all the client's earlier ones
        (``acked_below == request_id``). An attempt with an unknown outcome (a
        timeout, the node crashed) is retried at a leader after a short while;
        so is one refused before submitting. Sessions answer the retry with the
        first application's result, so the answer is the op's, and the history
        records one operation. Only where the server's session cannot vouch (a
        session's first request, or a session forgotten after an attempt may
        have applied) a VersionMismatch stays unknown, as the real client's
        Maybe. Retrying stops with the safety phase: the op stays unknown then.
        """
        uncertain = False  # an attempt the session no longer vouches for may have applied
        unsure = False  # an attempt in this session had an unknown outcome
        op = make(client.session_id, client.next_rid)
        try:
            while self._faults_on:
                leaders = self._leaders()
                sim_node = self.rng.choice(leaders) if leaders else None
                node = sim_node.node if sim_node is not None else None
                if sim_node is None or node is None or sim_node.rsm is None:
                    await asyncio.sleep(self.rng.randint(1, 3) * TICK_S)
                    continue
                if node.core.last_index - node.core.commit_index >= MAX_BACKLOG:
                    await asyncio.sleep(TICK_S)  # flow control, as waiting clients exert
                    continue
                attempt = asyncio.get_running_loop().create_task(sim_node.rsm.execute(op))
                sim_node.clients[attempt] = None
                attempt.add_done_callback(lambda done, n=sim_node: n.clients.pop(done, None))
                await asyncio.wait({attempt})
                failure = None if attempt.cancelled() else attempt.exception()
                if attempt.cancelled() or isinstance(failure, NotLeader | WrongLeader | Busy):
                    unsure |= attempt.cancelled() or type(failure) is WrongLeader
                    await asyncio.sleep(self.rng.randint(1, 5) * TICK_S)
                    continue
                if failure is not None:
                    raise failure
                result = attempt.result()
                if isinstance(result, SessionExpiredResult):
                    # Forgotten: whatever this op's attempts did is unknown from now on.
                    uncertain |= unsure
                    unsure = False
                    client.renew()
                    op = make(client.session_id, client.next_rid)
                    continue
                if op.acked_below <= FIRST_REQUEST_ID:
                    uncertain |= unsure  # the first request of a session: see ClientSession
                client.next_rid += 1
                if uncertain and isinstance(result, VersionMismatchResult):
                    return  # Maybe: left pending, reported as UNKNOWN
                self.answered_after_retry += unsure
                _, call_s = self._ops[number]  # type: ignore[misc]
                self._ops[number] = self._operation(op, result, call_s, self.now_s())
                return
            client.next_rid += 1  # given up: the next op acknowledges this one
        finally:
            client.busy = False

    def _operation(self, op: Op, result: object, call_s: float, return_s: float) -> Operation:
        match op, result:
            case GetOp(), GetOk(value=value, version=version):
                self._versions[op.key] = max(self._versions.get(op.key, 0), version)
                return Operation.get(op.client_id, op.key, (value, version), call_s, return_s)
            case GetOp(), NoKeyResult():
                return Operation.get(op.client_id, op.key, Outcome.NO_KEY, call_s, return_s)
            case PutOp(), PutOk(version=version):
                self._versions[op.key] = max(self._versions.get(op.key, 0), version)
                return Operation.put(
                    op.client_id, op.key, op.value, op.version, version, call_s, return_s
                )
            case PutOp(), NoKeyResult():
                return Operation.put(
                    op.client_id, op.key, op.value, op.version, Outcome.NO_KEY, call_s, return_s
                )
            case PutOp(), VersionMismatchResult(current_version=current):
                self._versions[op.key] = max(self._versions.get(op.key, 0), current)
                return Operation.put(
                    op.client_id, op.key, op.value, op.version, Outcome.MISMATCH,
                    call_s, return_s, current_version=current,
                )  # fmt: skip
        raise AssertionError(f"{op} answered {result!r}")

    def _history(self) -> list[Operation]:
        history = []
        for entry in self._ops.values():
            if isinstance(entry, Operation):
                history.append(entry)
                continue
            op, call_s = entry  # never answered: may take effect at any later time
            if isinstance(op, GetOp):
                history.append(Operation.get(op.client_id, op.key, Outcome.UNKNOWN, call_s))
            else:
                history.append(
                    Operation.put(
                        op.client_id, op.key, op.value, op.version, Outcome.UNKNOWN, call_s
                    )
                )
        return history

    # ------------------------------------------------------------------- run

    def run(self) -> NodeResult:
        loop = VirtualTimeLoop()
        self._loop = loop
        try:
            return loop.run_until_complete(self._main())
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
            self._loop = None

    async def _main(self) -> NodeResult:
        for sim_node in self.nodes.values():
            await self._start(sim_node)
        for _ in range(self.safety_ticks):
            await self._random_events()
            await asyncio.sleep(TICK_S)
            self._check()
        self.checker.logs_match(self._cores())  # type: ignore[arg-type]
        liveness_ticks = await self._liveness()
        self.checker.logs_match(self._cores())  # type: ignore[arg-type]
        for sim_node in self.nodes.values():
            self._crash(sim_node, "at the end")
        result = check(self._history(), timeout_s=30.0)
        if result.ok is not True:
            self.fail(f"client history not linearizable:\n{result.explanation}")
        ops = [op for op in self._ops.values() if isinstance(op, Operation)]
        return NodeResult(
            seed=self.seed,
            nodes=self.size,
            leaders=len(self.checker.leader_of_term),
            committed=len(self.checker.committed),
            crashes=self.crashes,
            snapshots_installed=self.installs,
            snapshots_taken=sum(s.storage.compactions for s in self.nodes.values()),
            operations=len(self._ops),
            acknowledged=len(ops),
            liveness_ticks=liveness_ticks,
            snapshot_chunks_damaged=self.snapshot_chunks_damaged,
            answered_after_retry=self.answered_after_retry,
            sessions_renewed=sum(c.generation for c in self._clients),
            transfers=self.transfers.transfers,
            transfers_completed=self.transfers_completed,
            timeouts_now_sent=self.transfers.timeouts_sent,
        )

    def _check(self) -> None:
        """Between ticks: a failure inside a node's task, and every node's invariants."""
        if self._failure is not None:
            raise self._failure
        for sim_node in self._up():
            node = sim_node.node
            assert node is not None
            failure = node.failure()
            if failure is not None:
                self.fail(f"n{sim_node.id} stopped: {failure!r}")
            self._observe(sim_node)
            self.transfers.log_stands_still(node.core)

    def _cores(self) -> list[SimNode]:
        return self._up()

    async def _liveness(self) -> int:
        """Heal everything; a put must be applied by every node within a bound."""
        logger.info("sim: liveness phase: network healed, faults off, every node restarted")
        self._faults_on = False
        self._group = dict.fromkeys(self.ids, 0)
        for sim_node in self.nodes.values():
            self._crash(sim_node, "for the liveness phase")
            await self._start(sim_node)
        start = self.ticks
        bound = self._liveness_bound()
        value = f"live-{self.seed}"
        attempts: set[int] = set()
        while self.ticks - start < bound:
            await asyncio.sleep(TICK_S)
            self._check()
            for sim_node in self._leaders():
                node = sim_node.node
                assert node is not None
                term = node.get_state()[0]
                if term not in attempts:
                    attempts.add(term)
                    self._start_live_put(sim_node, value)
            if all(
                n.rsm is not None and n.rsm.store.lookup("live") == (value, 1)
                for n in self.nodes.values()
            ):
                return self.ticks - start
        self.fail(
            f"liveness: the put was not applied on every node {bound} ticks after healing "
            f"the network (tried in terms {sorted(attempts)}); nodes: "
            f"{ {i: n.core.status() for i, n in self.nodes.items() if n.core is not None} }"
        )
        raise AssertionError("unreachable")

    def _start_live_put(self, sim_node: SimNode, value: str) -> None:
        rsm = sim_node.rsm
        assert rsm is not None

        async def put() -> None:
            # A retry of this put after an unknown outcome finds version 1: fine.
            with contextlib.suppress(NotLeader, WrongLeader):
                await rsm.execute(PutOp("live", value, 0, "live", 1, 1))

        task = asyncio.get_running_loop().create_task(put())
        sim_node.clients[task] = None
        task.add_done_callback(lambda done: sim_node.clients.pop(done, None))

    def _liveness_bound(self) -> int:
        """The core simulator's bound, plus the RSM's timeout twice (a put submitted
        just before a leader change waits that long before it is retried)."""
        longest = max(n.core.last_index for n in self.nodes.values() if n.core is not None)
        snapshots = [n.storage.snapshot for n in self.nodes.values()]
        biggest = max((len(snap.data) for snap in snapshots if snap is not None), default=0)
        # A put's command is about 60 bytes; a message carries at least one.
        bound = self.profile.liveness_bound_ticks(longest, biggest, command_bytes=64)
        return bound + 2 * round(self.op_timeout_s / TICK_S)
