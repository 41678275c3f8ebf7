"""The node simulator pointed at leases: real RSMs and lease keepers, in virtual time, under faults.

:class:`LeaseSimulation` is a :class:`~tests.sim.node_sim.NodeSimulation` (the
same seeded crashes, partitions, drops, slow disks and leadership transfers,
the same Raft checks and linearizable KV history) with a few lease clients
besides: each grants a lease of :data:`LEASE_TTL_S`, renews it a random
number of times at random intervals (some longer than the TTL), then stops.
Every node's clock is the one virtual clock, so the claim of
``kvraft.server.lease_keeper`` can be checked exactly:

    an expiry that revokes a lease applies (on the first node to apply it)
    no earlier than the start of any successful grant or keepalive of that
    lease + its TTL.

A start is the virtual time the client first sent the call (its retries keep
their first start, as the real client counts).

``planted=`` names a lease keeper with a planted bug (``tests/sim/planted.py``,
``PLANTED_KEEPERS``) that every node runs instead of the real one; a failure's
replay command is ``python -m tests.sim.replay --driver lease ...``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvraft.errors import Busy, NotLeader, WrongLeader
from kvraft.kv_protocol import DeleteOk, Op, SessionExpiredResult, StaleRequestResult
from kvraft.lease_protocol import (
    LeaseExpireOp,
    LeaseGrantOk,
    LeaseGrantOp,
    LeaseKeepaliveOk,
    LeaseKeepaliveOp,
)

from .node_sim import TICK_S, NodeResult, NodeSimulation
from .node_world import ObservedRSM, SimNode
from .planted import PLANTED_KEEPERS

REPLAY_COMMAND = ".venv/bin/python -m tests.sim.replay --driver lease --seed {seed} --nodes {nodes}"

LEASE_TTL_S = 2
# Lease clients at once, and the chance per tick that one more starts.
LEASE_CLIENTS = 3
LEASE_CLIENT_START = 0.03
# The calm phase lasts this many TTLs; after it, every lease must be gone within
# its TTL plus this (the keeper's check interval, a commit, a late keepalive's apply).
CALM_TTLS = 3
EXPIRY_BOUND_S = 1.0


@dataclass(frozen=True)
class LeaseResult:
    """A lease run's summary: the node run's, and what the lease clients and keepers did."""

    node: NodeResult
    granted: int  # leases granted
    renewals: int  # successful keepalives
    expired: int  # leases revoked by an expiry


class LeaseSimulation(NodeSimulation):
    """A node simulation with lease clients and the lease-safety check (module docstring)."""

    def __init__(
        self, seed: int, nodes: int = 3, *, safety_ticks: int = 300, planted: str | None = None
    ) -> None:
        super().__init__(seed, nodes, safety_ticks=safety_ticks)
        self.planted_keeper = planted
        self.keeper_class = None if planted is None else PLANTED_KEEPERS[planted]
        self.lease_rng = random.Random(f"kvraft-lease-sim/{seed}/{nodes}")
        # lease id -> the start times of its successful grant and keepalives
        self.renewed: dict[int, list[float]] = {}
        # lease id -> the virtual time its revoking expiry first applied anywhere
        self.expired_at: dict[int, float] = {}
        self._lease_clients = 0
        self._lease_client_count = 0
        # Lease clients run through the safety phase and the calm after liveness.
        self._leasing = True
        self.leases_at_end = 0

    def replay_command(self) -> str:
        command = REPLAY_COMMAND.format(seed=self.seed, nodes=self.size)
        return (
            command if self.planted_keeper is None else f"{command} --planted {self.planted_keeper}"
        )

    def _new_rsm(self, sim_node: SimNode) -> ObservedRSM:
        rsm = super()._new_rsm(sim_node)
        if self.keeper_class is not None:
            rsm.leases.__class__ = self.keeper_class
        return rsm

    async def _start(self, sim_node: SimNode) -> None:
        await super()._start(sim_node)
        assert sim_node.rsm is not None
        keeper = sim_node.rsm.leases
        applied = keeper.applied

        def observed(op: Op, result: Any) -> None:
            if isinstance(op, LeaseExpireOp) and isinstance(result, DeleteOk):
                self.expired_at.setdefault(op.lease_id, self.now_s())
            applied(op, result)

        keeper.applied = observed  # type: ignore[method-assign]

    async def _random_events(self) -> None:
        await super()._random_events()
        self._maybe_start_lease_client()

    def _maybe_start_lease_client(self) -> None:
        rng = self.lease_rng
        if (
            self._leasing
            and self._lease_clients < LEASE_CLIENTS
            and rng.random() < LEASE_CLIENT_START
        ):
            self._lease_clients += 1
            self._lease_client_count += 1
            task = asyncio.get_running_loop().create_task(
                self._lease_client(f"lease-client-{self._lease_client_count}")
            )
            self._client_tasks[task] = None
            task.add_done_callback(lambda done: self._client_tasks.pop(done, None))

    async def _lease_client(self, name: str) -> None:
        rng = self.lease_rng
        request_id = 1
        try:

            async def call(make: Callable[[str, int, int], Op]) -> tuple[float, Any] | None:
                nonlocal request_id
                op = make(name, request_id, request_id)
                started = self.now_s()
                result = await self._until_answered(op)
                request_id += 1
                return None if result is None else (started, result)

            granted = await call(lambda c, r, a: LeaseGrantOp(LEASE_TTL_S, c, r, a))
            if granted is None or not isinstance(granted[1], LeaseGrantOk):
                return
            lease = granted[1].lease_id
            self.renewed[lease] = [granted[0]]
            for _ in range(rng.randint(0, 8)):
                await asyncio.sleep(rng.uniform(0.2, 1.2 * LEASE_TTL_S))
                renewed = await call(lambda c, r, a: LeaseKeepaliveOp(lease, c, r, a))
                if renewed is None or not isinstance(renewed[1], LeaseKeepaliveOk):
                    return  # gone (a late keepalive) or given up
                self.renewed[lease].append(renewed[0])
        finally:
            self._lease_clients -= 1

    async def _until_answered(self, op: Op) -> Any:
        """Send ``op`` to leaders until one answers it (None: the faults ended first, or the
        session was forgotten); the same request id every attempt, as the real client."""
        while self._leasing:
            leaders = self._leaders()
            sim_node = self.lease_rng.choice(leaders) if leaders else None
            if sim_node is None or sim_node.rsm is None:
                await asyncio.sleep(self.lease_rng.randint(1, 3) * TICK_S)
                continue
            attempt = asyncio.get_running_loop().create_task(sim_node.rsm.execute(op))
            sim_node.clients[attempt] = None
            attempt.add_done_callback(lambda done, n=sim_node: n.clients.pop(done, None))
            await asyncio.wait({attempt})
            failure = None if attempt.cancelled() else attempt.exception()
            if attempt.cancelled() or isinstance(failure, NotLeader | WrongLeader | Busy):
                await asyncio.sleep(self.lease_rng.randint(1, 5) * TICK_S)
                continue
            if failure is not None:
                raise failure
            result = attempt.result()
            if isinstance(result, SessionExpiredResult | StaleRequestResult):
                return None
            return result
        return None

    async def _liveness(self) -> int:
        """The base liveness phase, then a calm one: a healed, stable cluster with the lease
        clients still at work (so leases expire, some racing a late keepalive), then none:
        every lease must be gone within its TTL of the calm's end, plus a bound."""
        ticks = await super()._liveness()
        calm_end = self.now_s() + CALM_TTLS * LEASE_TTL_S
        while self.now_s() < calm_end:
            self._maybe_start_lease_client()
            await asyncio.sleep(TICK_S)
            self._check()
        self._leasing = False
        give_up = self.now_s() + LEASE_TTL_S + EXPIRY_BOUND_S
        while self._live_leases() and self.now_s() < give_up:
            await asyncio.sleep(TICK_S)
            self._check()
        self.leases_at_end = self._live_leases()
        if self.leases_at_end:
            self.fail(
                f"{self.leases_at_end} leases still live {LEASE_TTL_S + EXPIRY_BOUND_S} s "
                "after their last possible renewal"
            )
        return ticks

    def _live_leases(self) -> int:
        return max((len(n.rsm.store.leases) for n in self._up() if n.rsm is not None), default=0)

    def run(self) -> LeaseResult:  # type: ignore[override]
        result = super().run()
        for lease, expired in self.expired_at.items():
            for started in self.renewed.get(lease, []):
                if expired < started + LEASE_TTL_S - 1e-9:
                    self.fail(
                        f"lease {lease} expired at {expired:.4f} s, before the TTL of the "
                        f"renewal that started at {started:.4f} s ran out "
                        f"({started + LEASE_TTL_S:.4f} s)"
                    )
        return LeaseResult(
            node=result,
            granted=len(self.renewed),
            renewals=sum(len(starts) - 1 for starts in self.renewed.values()),
            expired=len(self.expired_at),
        )
