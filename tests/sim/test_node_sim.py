"""Seeded simulation of real RaftNodes and RSMs under faults (see node_sim.py).

Every failure message ends with the one command that replays its seed, e.g.
``.venv/bin/python -m tests.sim.replay --driver node --seed 1234 --nodes 5``.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from .node_sim import NodeResult, NodeSimulation
from .planted import PLANTED_DRIVERS
from .seeds import CHUNK, CI_RUNS, STRESS_CHUNK, run_ids, run_replay, run_seeds, stress_runs
from .simulator import Violation
from .virtual_loop import Deadlock, VirtualTimeLoop

# 10,000 more seeds, beyond those of CI, for `make stress`.
STRESS_RUNS = stress_runs(6_000, 4_000)


def run_node_seeds(nodes: int, seeds: range) -> list[NodeResult]:
    return run_seeds(lambda seed, size: NodeSimulation(seed, size).run(), nodes, seeds)


@pytest.mark.parametrize(("nodes", "start"), CI_RUNS, ids=run_ids(CI_RUNS))
def test_real_nodes_are_safe_under_faults_and_live_once_healed(nodes: int, start: int) -> None:
    """RaftNode's own Ready loop, the RSM and the in-memory storage keep Raft's properties
    after every step of 100 seeded runs with drops, delays, partitions, slow writes and
    crashes mid-write; clients' histories are linearizable; each run then elects a
    leader and applies a put everywhere.

    Reference: Raft §5.2-§5.4 (Figure 3's properties), thesis §3.8
    """
    results = run_node_seeds(nodes, range(start, start + CHUNK))

    # The runs did exercise what they claim to.
    assert sum(r.crashes for r in results) > CHUNK
    assert sum(r.snapshots_taken for r in results) > 0
    assert sum(r.snapshots_installed for r in results) > 0
    # Some seeds damaged snapshot chunks in transit; every check above still held.
    assert sum(r.snapshot_chunks_damaged for r in results) > 0
    assert sum(r.leaders > 1 for r in results) > CHUNK // 4
    assert sum(r.acknowledged for r in results) > 10 * CHUNK
    # Sessions were put to work: retries answered as one operation, sessions forgotten.
    assert sum(r.answered_after_retry for r in results) > CHUNK // 4
    assert sum(r.sessions_renewed > 0 for r in results) > 0
    # Leaders were asked to transfer through RaftNode.transfer_leadership; many resolved.
    assert sum(r.transfers for r in results) > CHUNK
    assert sum(r.transfers_completed for r in results) > CHUNK // 2
    assert sum(r.timeouts_now_sent for r in results) > CHUNK


@pytest.mark.stress
@pytest.mark.parametrize(("nodes", "start"), STRESS_RUNS, ids=run_ids(STRESS_RUNS))
def test_real_nodes_are_safe_under_faults_stress(nodes: int, start: int) -> None:
    """As above, over 10,000 more seeds.

    Reference: Raft §5.2-§5.4
    """
    run_node_seeds(nodes, range(start, start + STRESS_CHUNK))


def test_a_node_seed_replays_exactly() -> None:
    """The seed decides everything, real asyncio tasks included: two runs are one run."""
    first = NodeSimulation(31, 5).run()
    second = NodeSimulation(31, 5).run()

    assert first == second
    assert first.acknowledged > 10


@pytest.mark.parametrize(
    ("planted", "violation"),
    [
        # A vote or an acknowledgement sent before its write, then lost in a crash.
        ("early-ack", r"(leader completeness|election safety|state machine safety): "),
        ("apply-first", r"n\d+ applied Entry\(.*\) before it was on its disk\n"),
    ],
)
def test_node_simulator_catches_a_planted_driver_bug(planted: str, violation: str) -> None:
    """A driver that breaks the durability order is caught within a few dozen seeds.

    Reference: Raft thesis §3.8
    """
    assert planted in PLANTED_DRIVERS
    for seed in range(50):
        try:
            NodeSimulation(seed, 3, planted=planted).run()
        except Violation as found:
            message = str(found)
            break
    else:
        pytest.fail(f"no violation found with {planted} in 50 seeds")

    assert re.match(violation, message), message
    replay = f"replay: .venv/bin/python -m tests.sim.replay --driver node --seed {seed} --nodes 3"
    assert f"{replay} --planted {planted}" in message


@pytest.mark.parametrize(
    ("planted", "violation"),
    [
        ("early-timeout-now", r"transfer: n\d sent TimeoutNow to n\d at term \d+ before it held"),
        ("propose-in-transfer", r"transfer: n\d appended up to \d+ during its transfer"),
    ],
)
def test_node_simulator_catches_a_planted_transfer_bug(planted: str, violation: str) -> None:
    """A core that sends TimeoutNow before its target caught up, or takes proposals
    during a transfer, is caught through the real driver within a few dozen seeds.

    Reference: Raft thesis §3.10
    """
    for seed in range(50):
        try:
            NodeSimulation(seed, 3, planted=planted).run()
        except Violation as found:
            assert re.match(violation, str(found)), found
            return
    pytest.fail(f"no violation found with {planted} in 50 seeds")


def test_node_simulator_catches_a_planted_core_bug() -> None:
    """The checkers see through the real driver too: a core that votes twice in a term.

    Reference: Raft §5.2
    """
    for seed in range(50):
        try:
            NodeSimulation(seed, 3, planted="double-vote").run()
        except Violation as violation:
            assert str(violation).startswith("election safety"), violation
            return
    pytest.fail("no violation found with double-vote in 50 seeds")


def test_node_replay_command_runs_the_seed() -> None:
    """The command a failure prints replays that seed of the node simulator."""
    completed = run_replay("--driver", "node", "--seed", "5")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "became leader at index" in completed.stdout
    assert completed.stdout.splitlines()[-1].startswith("ok: NodeResult(seed=5, nodes=3")


def test_virtual_loop_runs_an_hour_of_timers_at_once_in_order() -> None:
    """Virtual time: timers fire in due order, no real time passes, and a loop with
    nothing left to wait for says so instead of hanging."""
    loop = VirtualTimeLoop()
    fired: list[tuple[str, float]] = []

    async def sleeper(name: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        fired.append((name, loop.time()))

    async def main() -> None:
        await asyncio.gather(sleeper("late", 3600.0), sleeper("early", 0.5), sleeper("mid", 60))

    started = time.monotonic()
    try:
        loop.run_until_complete(main())
        assert fired == [("early", 0.5), ("mid", 60.0), ("late", 3600.0)]
        assert time.monotonic() - started < 5
        with pytest.raises(Deadlock):
            loop.run_until_complete(loop.create_future())
    finally:
        loop.close()
