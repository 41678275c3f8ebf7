"""Watch on real server processes: through a leader kill, Compacted, cancellation.

The writer's transactions return the revision each made; the watcher's
events must be exactly those, in order: no gap and no duplicate across the
SIGKILL of the leader the watcher was polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from kvraft import AsyncClient, Client, ClientClosed, Compacted, TxnSet, WatchEvent
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until

from .kv_support import OP_DEADLINE_S, find_leader, run_threads, statuses

pytestmark = pytest.mark.slow

WRITES = 60
POLL_WAIT_S = 1.0


def client(cluster: Cluster, servers: list[str] | None = None) -> Client:
    return Client(servers or cluster.addresses, deadline=OP_DEADLINE_S, call_timeout_s=0.5)


@pytest.mark.parametrize("behind", [False, True], ids=["polling", "behind"])
def test_a_watch_sees_every_write_once_in_order_through_a_leader_kill(  # type: ignore[no-untyped-def]
    make_cluster, behind: bool
) -> None:
    """``polling``: the leader dies under the watch's waiting poll. ``behind``: the
    watcher stops after its first event until the leader is dead, so it resumes on
    another server with half the writes still to read from there."""
    cluster = make_cluster(3)
    with client(cluster) as c:
        c.set("other", "x")  # a key outside the prefix: its revision must not show
        start = c.range(prefix="w/").revision + 1
    leader = find_leader(cluster)
    # The watcher polls the leader first, so the kill takes its server away mid-watch.
    leader_first = [cluster.address(leader)]
    leader_first += [a for i, a in enumerate(cluster.addresses) if i != leader]
    halfway, killed, first_seen = threading.Event(), threading.Event(), threading.Event()

    def writer() -> list[tuple[int, str, str]]:
        done = []
        with client(cluster) as w:
            for i in range(WRITES):
                if i == WRITES // 2:
                    halfway.set()
                    assert killed.wait(OP_DEADLINE_S)
                key, value = f"w/{i % 7}", str(i)
                if i % 5 == 4:  # two keys in one revision now and then
                    result = w.txn((), (TxnSet(key, value), TxnSet(f"w/pair{i}", value)))
                    done += [(result.revision, key, value), (result.revision, f"w/pair{i}", value)]
                else:
                    result = w.txn((), (TxnSet(key, value),))
                    done.append((result.revision, key, value))
                w.set("other", str(i))
                if i == 0:  # the rest only once the watcher has its first event
                    assert first_seen.wait(OP_DEADLINE_S)
        return done

    def watcher() -> list[WatchEvent]:
        seen: list[WatchEvent] = []
        with client(cluster, leader_first) as r:
            events = r.watch(prefix="w/", start_revision=start, poll_wait_s=POLL_WAIT_S)
            for event in events:
                seen.append(event)
                first_seen.set()
                if behind and len(seen) == 1:
                    assert killed.wait(OP_DEADLINE_S)
                if len(seen) == WRITES + WRITES // 5:
                    break
        return seen

    def killer() -> None:
        assert halfway.wait(OP_DEADLINE_S)
        assert find_leader(cluster) == leader

        def watcher_waits_on_the_leader() -> bool:
            rows = {r.get("id"): r for r in statuses(cluster)}
            return rows[leader].get("watch_polls_waiting") == 1

        if not behind:
            wait_until(watcher_waits_on_the_leader, OP_DEADLINE_S, message="the watch waits")
        cluster.kill(leader)
        killed.set()

    written, seen, _ = run_threads([writer, watcher, killer], timeout_s=240)
    assert [(e.revision, e.kv.key, e.kv.value) for e in seen] == written
    assert all(e.type == "put" and e.kv.mod_revision == e.revision for e in seen)


def test_compact_makes_older_watches_compacted_and_later_ones_resume(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)
    with client(cluster) as c:
        for i in range(10):
            c.set("k", str(i))
        now = c.range(prefix="k").revision
        assert c.compact(now - 3) == now - 3
        # Each replica compacts as it applies the entry: wait for the followers too.
        wait_until(
            lambda: all(r.get("history_first_revision") == now - 3 for r in statuses(cluster)),
            OP_DEADLINE_S,
            message="every replica compacted",
        )
        with pytest.raises(Compacted) as caught:
            next(iter(c.watch("k", start_revision=now - 4, poll_wait_s=POLL_WAIT_S)))
        assert caught.value.first_revision == now - 3
        assert f"starts at {now - 3}" in str(caught.value)
        events = c.watch("k", start_revision=now - 3, prev_kv=True, poll_wait_s=POLL_WAIT_S)
        first = next(events)
        events.close()
        assert (first.revision, first.kv.value) == (now - 3, "6")
        assert first.prev_kv is not None and first.prev_kv.value == "5"
        # Every replica compacted at the same point, through the log.
        for address in cluster.addresses:
            with client(cluster, [address]) as one, pytest.raises(Compacted):
                next(iter(one.watch("k", start_revision=now - 4, poll_wait_s=POLL_WAIT_S)))


def test_a_follower_restarted_from_a_snapshot_is_compacted_the_others_not(
    make_cluster,
) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3, server_args=["--snapshot-threshold", "4000"])
    follower = next(i for i in range(3) if i != find_leader(cluster))
    with client(cluster) as c:
        for i in range(40):
            c.set(f"s/{i}", "x" * 200)  # 8 KB of state: several snapshots
    cluster.restart(follower)
    row = next(r for r in statuses(cluster) if r.get("id") == follower)
    first = row["history_first_revision"]
    assert first > 1
    with client(cluster, [cluster.address(follower)]) as one:
        with pytest.raises(Compacted) as caught:
            next(iter(one.watch(prefix="s/", start_revision=1, poll_wait_s=POLL_WAIT_S)))
        assert caught.value.first_revision == first
    # With every server to ask, the watch starts on the restarted follower, which has
    # not the history, and carries on from a server that has it: no Compacted.
    servers = [cluster.address(follower)]
    servers += [a for i, a in enumerate(cluster.addresses) if i != follower]
    with (
        client(cluster, servers) as c,
        contextlib.closing(c.watch(prefix="s/", start_revision=1)) as events,
    ):
        got = [next(events) for _ in range(40)]
    assert [e.kv.key for e in got] == [f"s/{i}" for i in range(40)]


def test_closing_the_client_ends_a_watch_with_client_closed_and_frees_the_poll(
    make_cluster,
) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)

    async def scenario() -> None:
        c = AsyncClient(cluster.addresses, deadline=OP_DEADLINE_S, call_timeout_s=0.5)
        events = c.watch("quiet", poll_wait_s=POLL_WAIT_S)
        task = asyncio.ensure_future(anext(events))  # type: ignore[arg-type]
        await asyncio.to_thread(
            wait_until,
            lambda: sum(r.get("watch_polls_waiting", 0) for r in statuses(cluster)) == 1,
            OP_DEADLINE_S,
            message="the watch's poll waiting on a server",
        )
        await c.close()
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(task, OP_DEADLINE_S)

    asyncio.run(scenario())
    # The server's poll ends within its wait: nothing is left behind.
    wait_until(
        lambda: sum(r.get("watch_polls_waiting", 0) for r in statuses(cluster)) == 0,
        OP_DEADLINE_S,
        message="no watch poll left waiting",
    )


def test_a_sync_watch_closes_cleanly_when_stopped_and_when_its_client_closes(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)
    with client(cluster) as c:
        c.set("a", "1")
        revision = c.range(prefix="a").revision
        with contextlib.closing(c.watch("a", start_revision=revision)) as events:
            assert next(events).kv.value == "1"
        assert c.get("a") == ("1", 1)  # the client still works after the watch closed
    c2 = client(cluster)
    outcome: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in c2.watch("quiet", poll_wait_s=POLL_WAIT_S):
                pass
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    wait_until(
        lambda: sum(r.get("watch_polls_waiting", 0) for r in statuses(cluster)) == 1,
        OP_DEADLINE_S,
        message="the watch's poll waiting",
    )
    c2.close()
    thread.join(OP_DEADLINE_S)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosed), outcome
