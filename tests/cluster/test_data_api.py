"""The data API on real server processes: set/delete/range/txn under concurrency and a leader kill.

The bank: accounts under ``acct/`` move money between them only by
transactions that compare both accounts' mod revisions with what the mover
read; readers range over ``acct/`` and the sum must never change, in every
answer (a range reads at one revision). Meanwhile other clients set and
delete keys of their own and check each answer, and the leader is SIGKILLed
halfway. Reads of one client never go back in revision (linearizable reads
through the log), and the sets, deletes and gets two clients race on one key
are checked linearizable.
"""

from __future__ import annotations

import contextlib
import random
import threading

import pytest

from kvraft import Client, Compare, Maybe, NoKey, TxnSet, VersionMismatch
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable

from .kv_support import OP_DEADLINE_S, find_leader, run_threads

pytestmark = pytest.mark.slow

ACCOUNTS = 5
START_BALANCE = 100
TRANSFERS_PER_MOVER = 25


def client(cluster: Cluster) -> Client:
    return Client(cluster.addresses, deadline=OP_DEADLINE_S, call_timeout_s=0.5)


def balances(c: Client) -> tuple[dict[str, int], int]:
    result = c.range(prefix="acct/")
    assert not result.more
    return {kv.key: int(kv.value) for kv in result.kvs}, result.revision


def mover(cluster: Cluster, seed: int, halfway: threading.Event) -> int:
    """Transfers between random accounts; the number that applied for sure."""
    rng = random.Random(seed)
    done = 0
    with client(cluster) as c:
        for n in range(TRANSFERS_PER_MOVER):
            if n == TRANSFERS_PER_MOVER // 2:
                halfway.set()
            a, b = rng.sample([f"acct/{i}" for i in range(ACCOUNTS)], 2)
            seen = {kv.key: kv for kv in c.range(prefix="acct/").kvs}
            amount = rng.randint(0, int(seen[a].value))
            try:
                result = c.txn(
                    [
                        Compare(a, "mod_revision", "==", seen[a].mod_revision),
                        Compare(b, "mod_revision", "==", seen[b].mod_revision),
                    ],
                    [
                        TxnSet(a, str(int(seen[a].value) - amount)),
                        TxnSet(b, str(int(seen[b].value) + amount)),
                    ],
                )
            except Maybe:
                continue  # applied or not, atomically: the sum holds either way
            done += result.succeeded
    return done


def auditor(cluster: Cluster, stop: threading.Event) -> int:
    """Reads the bank until told to stop: the sum is always the same; revisions never go back."""
    reads, last_revision = 0, 0
    with client(cluster) as c:
        while not stop.is_set() or reads == 0:
            accounts, revision = balances(c)
            assert sum(accounts.values()) == ACCOUNTS * START_BALANCE, accounts
            assert revision >= last_revision
            last_revision = revision
            reads += 1
    return reads


def own_keys(cluster: Cluster, name: str, history: History) -> int:
    """set, versioned delete, delete_range on keys of its own: every answer as the contract says.

    The sets, deletes and gets of the shared key ``both`` go into ``history``
    for the linearizability checker (the two such clients race on it).
    """
    with client(cluster) as c:
        me = c.client_id
        for i in range(15):
            key = f"own/{name}/{i}"
            assert c.set(key, "a") == 1
            assert c.set(key, "b") == 2
            revision = c.delete(key, 2)
            with pytest.raises(NoKey):
                c.get(key)
            assert c.range(prefix=f"own/{name}/").revision >= revision
            c.set(key, "kept")
            value = f"{name}{i}"
            version = history.record_set(me, "both", value, lambda v=value: c.set("both", v))
            with contextlib.suppress(NoKey, VersionMismatch, Maybe):
                history.record_delete(me, "both", version, lambda v=version: c.delete("both", v))
            with contextlib.suppress(NoKey):
                history.record_get(me, "both", lambda: c.get("both"))
        assert c.delete_range(prefix=f"own/{name}/") == 15
        assert c.range(prefix=f"own/{name}/").kvs == ()
    return 15


def test_bank_transfers_keep_the_sum_through_a_leader_kill(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)
    with client(cluster) as c:
        for i in range(ACCOUNTS):
            c.set(f"acct/{i}", str(START_BALANCE))
    stop, halfway = threading.Event(), threading.Event()

    def killer() -> None:
        assert halfway.wait(OP_DEADLINE_S)
        cluster.kill(find_leader(cluster))

    movers = [lambda s=s: mover(cluster, s, halfway) for s in range(3)]
    history = History()
    others = [lambda n=n: own_keys(cluster, n, history) for n in ("x", "y")]
    audit: list[int] = []
    audit_thread = threading.Thread(target=lambda: audit.append(auditor(cluster, stop)))
    audit_thread.start()
    try:
        results = run_threads([*movers, *others, killer], timeout_s=240)
    finally:
        stop.set()
        audit_thread.join(OP_DEADLINE_S)
    assert not audit_thread.is_alive() and audit and audit[0] > 0
    assert sum(results[:3]) > 0  # some transfers applied
    with client(cluster) as c:
        accounts, _ = balances(c)
    assert len(accounts) == ACCOUNTS
    assert sum(accounts.values()) == ACCOUNTS * START_BALANCE
    assert len(history) == 2 * 15 * 3
    assert_linearizable(history, 20.0)
