"""Membership changes on real server processes: learners, promotion, 3 -> 5 -> 3, replacement.

Each cluster is made with spares (``Cluster(n, members=[0, 1, 2])``): ids
whose proxies and data dirs exist but which start only when a test adds them
(``kvraft member add``) and starts them to join (``Cluster.join``). Every
node's ``--peers`` after its first start names every id's address, so these
tests also prove that ``--peers`` says how to reach members, not who they are.
The workloads end with a linearizability check of everything the clients saw.

Reference: Raft thesis §4.1 (single-server changes), §4.2.1 (learners),
§4.2.2 (removing the leader), §4.2.3 (disruptive servers); docs/membership.md.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from kvraft.client.admin import fetch_statuses, member_call, transfer_leadership
from kvraft.errors import RemoteError, RpcError, Unavailable
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until

from .kv_support import RecordingClient, find_leader, own_key_puts, shared_key_worker

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 60.0
CHANGE_TIMEOUT_S = 30.0
# A 1 KiB snapshot threshold: a few dozen puts compact the log, so a learner
# added afterwards can only catch up from a snapshot.
SMALL_SNAPSHOTS = ("--snapshot-threshold", "1024")


# ------------------------------------------------------------------ helpers


# The operator's calls (member list, add, promote, remove) are made on the
# servers' private ports: the faults under test are the cluster's own (its
# peers' traffic, its clients'), not an operator's lost replies.


def listing(cluster: Cluster, timeout_s: float = 20.0) -> dict[str, Any]:
    """``kvraft member list``'s answer: the configuration as the leader sees it.

    Right after a fault there may be no leader to ask for a while (an election
    takes a few hundred ms, a partitioned leader keeps its role until its
    check-quorum ends it): wait for one to answer, up to ``timeout_s``.
    """
    answers: list[dict[str, Any]] = []

    def answered() -> bool:
        try:
            answers.append(member_call(cluster.private_addresses, "member.list", None, 2.0))
        except (Unavailable, RpcError, RemoteError):
            return False
        return True

    wait_until(answered, timeout_s, interval_s=0.1, message="a leader answering member.list")
    return answers[-1]


def voters_and_learners(cluster: Cluster) -> tuple[set[int], set[int]]:
    rows = listing(cluster)["members"]
    return (
        {int(r["id"]) for r in rows if r["role"] == "voter"},
        {int(r["id"]) for r in rows if r["role"] == "learner"},
    )


def change(cluster: Cluster, method: str, args: Any) -> dict[str, Any]:
    """One change, made once, that must succeed (once a leader is there to ask)."""
    find_leader(cluster)  # after a kill, the election it may take
    return member_call(cluster.private_addresses, method, args, 10.0)


def change_until(
    cluster: Cluster, method: str, args: Any, done: Any, timeout_s: float = CHANGE_TIMEOUT_S
) -> None:
    """Ask for a change until ``done(voters, learners)`` holds, as an operator would under
    faults: a leader lost mid-change, or an earlier change still committing, answers an
    error; the configuration is read again before asking again (never twice blindly)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            voters, learners = voters_and_learners(cluster)
            if done(voters, learners):
                return
            member_call(cluster.private_addresses, method, args, 10.0)
        except (RemoteError, Unavailable, RpcError) as exc:
            last = str(exc)
            time.sleep(0.2)
    raise AssertionError(f"{method} {args!r} not done within {timeout_s}s (last error: {last})")


def caught_up(cluster: Cluster, node: int) -> bool:
    answer = listing(cluster)
    rows = {int(r["id"]): r for r in answer["members"]}
    return node in rows and int(rows[node].get("match_index", 0)) >= int(answer["commit_index"])


def add_learner(cluster: Cluster, node: int, *, via: list[int] | None = None) -> None:
    """``member add ID ADDRESS --learner``, start it to join, wait until it caught up."""
    change(cluster, "member.add", {"id": node, "address": cluster.address(node), "learner": True})
    cluster.join(node, via=via)
    wait_until(lambda: caught_up(cluster, node), 20.0, message=f"n{node} caught up")


def status_of(cluster: Cluster, node: int) -> dict[str, Any]:
    return fetch_statuses([cluster.private_addresses[node]], 0.5)[0]


def fill(cluster: Cluster, history: History, puts: int) -> RecordingClient:
    client = RecordingClient(cluster, history)
    own_key_puts(client, "fill", puts)
    return client


# ------------------------------------------------------------- learners


def test_a_learner_far_behind_catches_up_from_a_snapshot_and_is_promoted(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A learner added after the log was compacted gets the snapshot (its log says so),
    applies what the others applied, is promoted, and then counts: with it a voter,
    the cluster of four commits with one of the first three killed, and the
    leadership can be handed to it."""
    cluster = make_cluster(4, members=[0, 1, 2], server_args=SMALL_SNAPSHOTS)
    history = History()
    client = fill(cluster, history, 60)

    add_learner(cluster, 3)

    assert "installed snapshot" in cluster.log_path(3).read_text()
    assert voters_and_learners(cluster) == ({0, 1, 2}, {3})
    result = change(cluster, "member.promote", 3)
    assert list(result["voters"]) == [0, 1, 2, 3] and not result["learners"]
    leader = find_leader(cluster)
    cluster.kill(next(i for i in (0, 1, 2) if i != leader))
    own_key_puts(client, "after", 3)  # 3 of 4 voters: n3's acknowledgement is needed
    wait_until(
        lambda: (
            status_of(cluster, 3)["applied_index"] >= status_of(cluster, leader)["commit_index"]
        ),
        10.0,
        message="n3 applied what the leader committed",
    )
    outcome = transfer_leadership(cluster.private_addresses, 3, 10.0)
    assert (outcome.old_leader, outcome.new_leader) == (leader, 3)
    assert status_of(cluster, 3)["role"] == "leader"
    own_key_puts(client, "led-by-n3", 3)
    client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_promoting_a_lagging_learner_is_refused_with_a_clear_error(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A learner more than --max-promotion-lag entries behind stays a learner and the
    refusal says by how much; once it has caught up the same promotion is made."""
    cluster = make_cluster(4, members=[0, 1, 2], server_args=("--max-promotion-lag", "5"))
    history = History()
    client = fill(cluster, history, 20)
    change(cluster, "member.add", {"id": 3, "address": cluster.address(3), "learner": True})

    with pytest.raises(RemoteError) as refused:  # n3 is not even running: match index 0
        change(cluster, "member.promote", 3)

    assert refused.value.code == "member_refused"
    assert "n3 is" in refused.value.message
    assert "entries behind the leader (a learner is promoted within 5)" in refused.value.message
    assert voters_and_learners(cluster) == ({0, 1, 2}, {3})
    cluster.join(3)
    wait_until(lambda: caught_up(cluster, 3), 20.0, message="n3 caught up")
    assert list(change(cluster, "member.promote", 3)["voters"]) == [0, 1, 2, 3]
    client.close()


# -------------------------------------------------------- 3 -> 5 -> 3


def grow_and_shrink(cluster: Cluster, faults: list[str], rounds: int) -> None:
    """3 -> 5 -> 3, ``rounds`` times, under a shared-key workload; a fault between steps.

    Faults: ``kill-leader`` (SIGKILL, restart), ``partition-leader`` (the leader
    alone for a while, then healed), ``kill-follower``.
    """
    history = History()
    stop = threading.Event()
    clients = [RecordingClient(cluster, history, call_timeout_s=0.3) for _ in range(3)]
    stats: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda c=c, s=s: stats.append(shared_key_worker(c, ["a", "b"], stop, s)),
            daemon=True,
        )
        for s, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    step = 0

    def fault() -> None:
        nonlocal step
        kind = faults[step % len(faults)]
        step += 1
        leader = find_leader(cluster)
        if kind == "kill-leader":
            cluster.kill(leader)
            cluster.restart(leader)
        elif kind == "kill-follower":
            follower = next(i for i in cluster.started_ids if i != leader and cluster.is_alive(i))
            cluster.kill(follower)
            cluster.restart(follower)
        elif kind == "partition-leader":
            others = [i for i in cluster.started_ids if i != leader]
            cluster.partition([leader], others)
            time.sleep(1.0)  # the fault's length: long enough for a new election
            cluster.heal()

    try:
        for _ in range(rounds):
            for node in (3, 4):
                change_until(
                    cluster,
                    "member.add",
                    {"id": node, "address": cluster.address(node), "learner": True},
                    lambda v, learners, n=node: n in v or n in learners,
                )
                if not cluster.is_alive(node):
                    # On its own data dir (empty the first time): an id that voted
                    # never comes back on a new disk (docs/membership.md).
                    cluster.join(node)
                wait_until(lambda n=node: caught_up(cluster, n), 30.0, message=f"n{node} caught up")
                change_until(cluster, "member.promote", node, lambda v, _l, n=node: n in v)
                fault()
            assert voters_and_learners(cluster)[0] == {0, 1, 2, 3, 4}
            for node in (3, 4):
                change_until(
                    cluster,
                    "member.remove",
                    node,
                    lambda v, learners, n=node: n not in v and n not in learners,
                )
                cluster.terminate(node)
                fault()
            assert voters_and_learners(cluster) == ({0, 1, 2}, set())
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()
    log.info(
        "membership workload: %d rounds, %d gets, %d puts ok, %d mismatches, %d maybes, %d faults",
        rounds,
        sum(s.gets for s in stats),
        sum(s.puts_ok for s in stats),
        sum(s.mismatches for s in stats),
        sum(s.maybes for s in stats),
        step,
    )
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert sum(s.puts_ok for s in stats) > 0
    assert not [e for s in stats for e in s.errors], stats
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_three_to_five_to_three_under_load_with_a_leader_killed(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Grow to five and shrink back to three while clients race on shared keys, the
    leader SIGKILLed (and restarted) after each change: the whole history is linearizable.

    Reference: Raft thesis §4.1
    """
    cluster = make_cluster(5, members=[0, 1, 2])
    grow_and_shrink(cluster, ["kill-leader", "kill-follower"], rounds=1)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_three_to_five_to_three_repeatedly_under_kills_and_partitions(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """As above, three times over, with the leader partitioned away between changes too."""
    cluster = make_cluster(5, members=[0, 1, 2])
    grow_and_shrink(cluster, ["partition-leader", "kill-leader", "kill-follower"], rounds=3)


# ------------------------------------------------------------- replacing


def test_a_dead_member_is_replaced_in_two_steps(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Its disk dead, n2 is (1) removed, then (2) n3 added as a learner, started with
    --join on an empty data dir, and promoted: with n3 a voter the cluster survives
    losing a second of the first three (a majority of n0, n1, n3 remains)."""
    cluster = make_cluster(4, members=[0, 1, 2])
    history = History()
    client = fill(cluster, history, 10)
    cluster.kill(2)
    cluster.wipe(2)

    removed = change(cluster, "member.remove", 2)  # step 1
    add_learner(cluster, 3, via=[0, 1])  # step 2: add + start with --join
    promoted = change(cluster, "member.promote", 3)

    assert list(removed["voters"]) == [0, 1] and list(promoted["voters"]) == [0, 1, 3]
    assert "--join" in cluster.server_command(3)
    leader = find_leader(cluster)
    lost = 1 if leader != 1 else 0
    cluster.kill(lost)
    own_key_puts(client, "fill", 3)  # two of n0, n1, n3
    # n3 restarts with the same --join while the members it names are down: its
    # data dir decides, it does not ask them again.
    cluster.kill_all()
    cluster.restart(3)
    cluster.restart(lost)
    own_key_puts(client, "fill", 3)  # n3 and the one restarted
    client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


# ------------------------------------------------------------ removing


def test_a_removed_leader_steps_down_and_the_others_elect_one(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The leader commits its own removal, then stops leading (its process runs on);
    the two left elect a leader and take writes.

    Reference: Raft thesis §4.2.2
    """
    cluster = make_cluster(3)
    history = History()
    client = fill(cluster, history, 3)
    old = find_leader(cluster)

    result = change(cluster, "member.remove", old)

    assert old not in result["voters"]
    wait_until(
        lambda: status_of(cluster, old).get("role") != "leader", 10.0, message="stepped down"
    )
    assert cluster.is_alive(old)
    own_key_puts(client, "fill", 3)
    new = find_leader(cluster)
    assert new != old
    client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_a_joined_leader_commits_its_own_removal(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """n3 joined later (no bootstrap member has it in --peers), leads, and removes itself:
    the others keep answering it until the removal commits, so the change is answered
    done by the leader that made it, not failed and finished by the next one.

    Reference: Raft thesis §4.2.2 (the leader replicates its removal while not a member)
    """
    cluster = make_cluster(4, members=[0, 1, 2])
    history = History()
    client = fill(cluster, history, 3)
    add_learner(cluster, 3)
    change(cluster, "member.promote", 3)

    # n3 to lead (a transfer would do, but one to a 4th voter is refused by the two
    # followers' leases: see the report): cut the leader off until n3 wins an election.
    def n3_leads() -> bool:
        leader = find_leader(cluster)
        if leader == 3:
            return True
        cluster.partition([leader], [i for i in range(4) if i != leader])
        wait_until(lambda: find_leader(cluster) != leader, 10.0, message="a new leader")
        cluster.heal()
        return find_leader(cluster) == 3

    wait_until(n3_leads, 60.0, interval_s=0.0, message="n3 leading")

    result = member_call([cluster.private_addresses[3]], "member.remove", 3, 10.0)

    assert list(result["voters"]) == [0, 1, 2]
    assert "stepping down: heard from no quorum" not in cluster.log_path(3).read_text()
    own_key_puts(client, "fill", 3)
    assert find_leader(cluster) != 3
    client.close()
    assert_linearizable(history, CHECK_TIMEOUT_S)


def test_a_removed_node_that_never_heard_of_its_removal_cannot_disturb_the_cluster(
    make_cluster,
) -> None:  # type: ignore[no-untyped-def]
    """n2, cut off, is removed without knowing; healed, it times out and campaigns
    (no leader sends to it any more), and the others ignore it: same leader, same term.

    Reference: Raft thesis §4.2.3
    """
    cluster = make_cluster(3)
    leader = find_leader(cluster)
    other = next(i for i in range(3) if i != leader)
    removed = next(i for i in range(3) if i not in (leader, other))
    cluster.disconnect(removed)
    # Asked of the two connected nodes only (a status call to n2 would just time out).
    servers = [cluster.address(leader), cluster.address(other)]
    member_call(servers, "member.remove", removed, 10.0)
    term = status_of(cluster, leader)["term"]

    def campaigns() -> int:
        return cluster.log_path(removed).read_text().count("starting pre-vote")

    cluster.reconnect(removed)
    before = campaigns()
    deadline = time.monotonic() + 3.0  # ten election timeouts and more
    while time.monotonic() < deadline:
        row = status_of(cluster, leader)
        assert (row["role"], row["term"]) == ("leader", term), row
        time.sleep(0.05)

    assert campaigns() > before  # it did campaign, reconnected, and was ignored
    assert voters_and_learners(cluster) == ({leader, other}, set())
