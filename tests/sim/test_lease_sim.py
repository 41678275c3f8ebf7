"""The lease keeper under the node simulator: no lease expires before its TTL from a renewal.

Real RSMs and lease keepers on real RaftNodes, in virtual time, under the node
simulator's crashes, partitions, drops and leadership transfers (lease_sim.py).
A few dozen seeds in the default suite, many more under ``make stress``, and a
keeper with a planted bug to show the check can fail.
"""

from __future__ import annotations

import re

import pytest

from .lease_sim import LeaseResult, LeaseSimulation
from .planted import PLANTED_KEEPERS
from .seeds import run_replay, run_seeds
from .simulator import Violation

# The default suite: 16 seeds of 3 nodes and 6 of 5 (about 0.3 s of CPU a seed).
QUICK_RUNS = [(3, range(0, 16)), (5, range(0, 6))]
# `make stress`: 2,000 more, from 10,000 on (beyond the default suite's seeds).
STRESS_RUNS = [(3, range(10_000 + s, 10_000 + s + 500)) for s in range(0, 1500, 500)] + [
    (5, range(20_000, 20_500))
]


def run_lease_seeds(nodes: int, seeds: range) -> list[LeaseResult]:
    return run_seeds(lambda seed, size: LeaseSimulation(seed, size).run(), nodes, seeds)


@pytest.mark.parametrize(("nodes", "seeds"), QUICK_RUNS, ids=[f"n{n}" for n, _ in QUICK_RUNS])
def test_no_lease_expires_before_its_ttl_from_a_renewal_under_faults(
    nodes: int, seeds: range
) -> None:
    """Across crashes, partitions and failovers, every expiry that revoked a lease applied
    no earlier than the start of each successful grant or keepalive of it + its TTL, and
    once the clients stop, every lease is gone within its TTL plus a bound.

    Reference: kvraft.server.lease_keeper (rules 1-3 and the keepalive argument)
    """
    results = run_lease_seeds(nodes, seeds)

    # The runs exercised what they claim to: leases granted, renewed and expired, with
    # changes of leader while they lived.
    assert sum(r.granted for r in results) > 3 * len(seeds)
    assert sum(r.renewals for r in results) > 3 * len(seeds)
    assert sum(r.expired for r in results) >= sum(r.granted for r in results)
    assert sum(r.node.leaders > 1 for r in results) > len(seeds) // 2
    assert sum(r.node.crashes for r in results) > len(seeds)


@pytest.mark.stress
@pytest.mark.parametrize(("nodes", "seeds"), STRESS_RUNS, ids=[str(s) for _, s in STRESS_RUNS])
def test_no_lease_expires_before_its_ttl_stress(nodes: int, seeds: range) -> None:
    """As above, over 2,000 more seeds."""
    run_lease_seeds(nodes, seeds)


def test_lease_simulator_catches_a_keeper_without_the_failover_extension() -> None:
    """A new leader that gives inherited leases less than a full TTL (breaking rule 1)
    expires a lease renewed just before the failover too early: caught within a few
    dozen seeds, with the command that replays it.

    Reference: kvraft.server.lease_keeper rule 1 (etcd's lease rule on a leader change)
    """
    planted = "no-failover-extension"
    assert planted in PLANTED_KEEPERS
    for seed in range(40):
        try:
            LeaseSimulation(seed, 3, planted=planted).run()
        except Violation as found:
            message = str(found)
            break
    else:
        pytest.fail(f"no violation found with {planted} in 40 seeds")

    assert re.match(r"lease \d+ expired at [\d.]+ s, before the TTL of the renewal", message)
    replay = f".venv/bin/python -m tests.sim.replay --driver lease --seed {seed} --nodes 3"
    assert f"replay: {replay} --planted {planted}" in message
    replayed = run_replay("--driver", "lease", "--seed", str(seed), "--planted", planted)
    assert replayed.returncode == 1
    assert "VIOLATION: lease" in replayed.stdout


def test_expiries_still_in_the_log_are_not_proposed_again_when_commits_are_slow() -> None:
    """Seed 10170 (one entry per message, a snapshot per entry, a follower always
    installing one): commits come slowly, and a keeper that proposed its expiries
    again at every op timeout grew the log faster than it committed, so 12 leases
    outlived their TTL by seconds. Waiting for each batch to apply, they expire.

    Reference: kvraft.server.lease_keeper (bounds: one batch at a time, never twice)
    """
    result = LeaseSimulation(10_170, 3).run()

    assert result.expired >= result.granted > 0
