"""Leases, the leased lock and the election recipe on real server processes.

- The keys of an expired lease and of a revoked lease are gone on every
  replica, and a watcher sees each lease's keys go as deletes in one revision.
- A lease kept alive across the SIGKILL of the leader is never seen gone
  before its TTL has run from the start of the client's last successful
  keepalive (the monotonic clocks of the test and the servers run at one rate).
- A lock whose holder process is SIGKILLed is taken by another process within
  the TTL plus :data:`TAKEOVER_BOUND_S`, and fencing tokens strictly increase.
- An election hands over when the leading candidate's process is SIGKILLed.

TTLs are the minimum a user may ask for (2 s; 3 s where a failover must fit
inside one), so the suite stays short without a lower limit for tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft import Client, Lock, NoKey
from kvraft.client.election import Election
from kvraft.lease_protocol import MIN_LEASE_TTL_S
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until

from .kv_support import OP_DEADLINE_S, find_leader, statuses

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# After the TTL of a dead holder's lease has run out, the leader sees it within its
# check interval (0.1 s), commits the revocation, and the waiter's watch hears of the
# delete: well under a second on an idle machine; this allows for a loaded one.
TAKEOVER_BOUND_S = 3.0
# Once nothing renews it, a lease's keys go within its TTL plus this (same reasons).
EXPIRY_BOUND_S = 3.0


def client(cluster: Cluster) -> Client:
    return Client(cluster.addresses, deadline=OP_DEADLINE_S, call_timeout_s=0.5)


def replica_counts(cluster: Cluster) -> list[tuple[int, int]]:
    """(keys, leases) on every replica, once every live one has applied all it committed."""
    rows = [r for r in statuses(cluster) if r.get("reachable")]
    return [(int(r["keys"]), int(r["leases"])) for r in rows]


def test_keys_of_expired_and_revoked_leases_go_everywhere_as_one_revision_of_deletes(  # type: ignore[no-untyped-def]
    make_cluster,
) -> None:
    cluster = make_cluster(3)
    with client(cluster) as c:
        c.set("kept", "x")
        revoked = c.lease_grant(MIN_LEASE_TTL_S)
        granting = time.monotonic()
        expiring = c.lease_grant(MIN_LEASE_TTL_S)
        start = c.set("l/r0", "v", lease=revoked.id)
        for i in range(1, 3):
            c.set(f"l/r{i}", "v", lease=revoked.id)
        for i in range(3):
            c.set(f"l/e{i}", "v", lease=expiring.id)
        wait_until(lambda: replica_counts(cluster) == [(7, 2)] * 3, OP_DEADLINE_S)

        assert c.lease_revoke(revoked.id) == 3
        events = c.watch(prefix="l/", start_revision=start)
        seen = [next(events) for _ in range(6 + 3 + 3)]  # 6 puts, then 2 x 3 deletes
        gone_at = time.monotonic()
        events.close()

        deletes = [e for e in seen if e.type == "delete"]
        assert [e.type for e in seen[:6]] == ["put"] * 6
        assert [e.kv.key for e in deletes] == ["l/r0", "l/r1", "l/r2", "l/e0", "l/e1", "l/e2"]
        # Each lease's keys went in one revision, the revoked lease's first.
        assert deletes[0].revision == deletes[1].revision == deletes[2].revision
        assert deletes[3].revision == deletes[4].revision == deletes[5].revision
        assert deletes[0].revision < deletes[3].revision
        # Seen gone after its TTL from the grant's start, and not long after.
        assert granting + MIN_LEASE_TTL_S <= gone_at < granting + MIN_LEASE_TTL_S + EXPIRY_BOUND_S
        wait_until(
            lambda: replica_counts(cluster) == [(1, 0)] * 3,
            OP_DEADLINE_S,
            message="every replica without the leases' keys",
        )
        with pytest.raises(NoKey):
            c.get("l/e0")
        assert c.get("kept")[0] == "x"


def test_a_lease_kept_alive_through_a_leader_kill_lives_its_ttl_from_the_last_keepalive(  # type: ignore[no-untyped-def]
    make_cluster,
) -> None:
    ttl = MIN_LEASE_TTL_S + 1  # room for a failover between two keepalives
    cluster = make_cluster(3)
    with client(cluster) as keeper, client(cluster) as prober:
        lease = keeper.lease_grant(ttl)
        keeper.set("held", "v", lease=lease.id)
        last_start = time.monotonic()  # the grant's start is no later than this
        stop_keeping, killed = threading.Event(), threading.Event()
        renewed_after_kill = []

        def keep() -> None:
            nonlocal last_start
            while not stop_keeping.is_set():
                started = time.monotonic()
                keeper.lease_keepalive(lease.id)  # LeaseNotFound here fails the test
                last_start = started
                if killed.is_set():
                    renewed_after_kill.append(started)
                stop_keeping.wait(ttl / 6)

        thread = threading.Thread(target=keep, daemon=True)
        thread.start()
        time.sleep(0.5)
        cluster.kill(find_leader(cluster))
        killed.set()
        wait_until(lambda: len(renewed_after_kill) >= 3, OP_DEADLINE_S, message="renewals")
        stop_keeping.set()
        thread.join(OP_DEADLINE_S)
        assert not thread.is_alive()

        gone = None
        while gone is None:  # the key is there until the lease expires
            try:
                prober.get("held")
            except NoKey:
                gone = time.monotonic()  # the delete applied before this instant
        assert gone >= last_start + ttl, (
            f"gone {gone - last_start:.3f} s after the last keepalive's start (ttl {ttl} s)"
        )
        assert gone < last_start + ttl + EXPIRY_BOUND_S


@contextlib.contextmanager
def holder(cluster: Cluster, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A lease_holder process (lock or campaign), its first line; SIGKILLed at the end."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.cluster.lease_holder",
            args[0],
            ",".join(cluster.addresses),
            *args[1:],
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, f"holder exited with {proc.wait(OP_DEADLINE_S)}"
        yield proc, line
    finally:
        proc.kill()
        proc.wait(OP_DEADLINE_S)


def sigkill(proc: subprocess.Popen[str]) -> float:
    proc.send_signal(signal.SIGKILL)
    proc.wait(OP_DEADLINE_S)
    return time.monotonic()


def test_a_lock_whose_holder_is_sigkilled_is_taken_within_the_ttl_with_a_larger_token(  # type: ignore[no-untyped-def]
    make_cluster,
) -> None:
    ttl = MIN_LEASE_TTL_S
    cluster = make_cluster(3)
    with client(cluster) as c, holder(cluster, "lock", "job", str(ttl)) as (proc, line):
        first_token = int(line.removeprefix("held "))
        waiter = Lock(c, "job", ttl=ttl)
        assert waiter.try_acquire() is None  # held by the other process
        killed_at = sigkill(proc)
        second_token = waiter.acquire(timeout=ttl + TAKEOVER_BOUND_S + 5)
        took_s = time.monotonic() - killed_at
        assert second_token > first_token
        assert took_s < ttl + TAKEOVER_BOUND_S, f"taken {took_s:.2f} s after the kill"
        waiter.release()
        with Lock(c, "job", ttl=ttl) as third_token:  # the block gets the token
            assert third_token > second_token


def test_an_election_hands_over_when_the_leaders_process_dies(make_cluster) -> None:  # type: ignore[no-untyped-def]
    ttl = MIN_LEASE_TTL_S
    cluster = make_cluster(3)
    with (
        client(cluster) as c,
        client(cluster) as o,
        holder(cluster, "campaign", "svc", str(ttl), "p1") as (proc, line),
    ):
        first_revision = int(line.removeprefix("leading "))
        observer = Election(o, "svc", ttl=ttl)
        values = observer.observe()
        assert next(values) == "p1"
        second = Election(c, "svc", ttl=ttl)
        elected: list[int] = []
        campaign = threading.Thread(target=lambda: elected.append(second.campaign("p2")))
        campaign.start()
        time.sleep(0.3)
        assert not elected and second.leader() == "p1"  # p2 waits in line

        killed_at = sigkill(proc)
        campaign.join(ttl + TAKEOVER_BOUND_S + 5)
        assert elected and elected[0] > first_revision
        assert time.monotonic() - killed_at < ttl + TAKEOVER_BOUND_S
        assert second.revision == elected[0] and not second.lost
        seen = next(values)
        while seen != "p2":  # p1 gone (None) may show before p2 leads
            assert seen is None
            seen = next(values)

        second.resign()
        assert next(values) is None
        assert second.leader() is None
        values.close()
