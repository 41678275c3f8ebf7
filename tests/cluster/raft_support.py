"""A synchronous tester for the Raft suite: drives real servers through their test hooks.

:class:`RaftTester` plays the part of the classic course tester's ``config``:
the test calls ``submit`` (the tester's ``rf.Start()``), ``state``
(``rf.GetState()``) and reads committed entries, always on the servers'
*private* addresses, so the tester itself is never subject to network faults;
faults apply only between servers (through the proxies). It owns one asyncio
loop in a daemon thread and runs every call there, so its methods may be called
from any number of test threads.

Conventions, as in the classic tester:

- ``connected[i]`` is the tester's view of the network: ``disconnect(i)`` and
  ``connect(i)`` switch both the proxies and that view, and the helpers that
  look for a leader or submit commands only consider connected, running
  servers. ``crash(i)`` disconnects and SIGKILLs a server; ``start(i)``
  restarts it from its data dir (still disconnected until ``connect(i)``).
- A killed or unresponsive server simply gives no answer (``None``).
- Every committed entry any server reports is remembered by index; a server
  reporting a different command at an index already seen committed fails the
  test at once (state machine safety, checked all along the test, across
  crashes and restarts too).

One difference from the classic tester: a leader appends a no-op entry (read
back as ``b""``) at the start of each term, so the indexes commands land at
are not consecutive; :meth:`RaftTester.one` checks the index ``submit`` returned.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgpack

from kvraft.errors import CallTimeout, ConnectionLost
from kvraft.loop_thread import EventLoopThread
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender, pack
from kvraft.testing.cluster import Cluster
from kvraft.testing.faults import REORDERING, NetworkProfile

log = logging.getLogger("raft_tester")

T = TypeVar("T")

#: The classic tester's RaftElectionTimeout: long enough that an election has
#: surely been held (the servers' randomized timeout is at most 300 ms).
ELECTION_TIMEOUT_S = 0.5
#: How long ``check_one_leader`` waits for a leader (the classic 10 x ~500 ms).
LEADER_DEADLINE_S = 5.0
#: ``one()``: overall deadline, and per submitted command.
ONE_DEADLINE_S = 10.0
ONE_AGREEMENT_S = 2.0
#: Timeout of one hook call on a private address (no faults on that path).
CALL_TIMEOUT_S = 1.0


def command(value: object) -> bytes:
    """A test command: the classic suites submit ints; ours are their bytes."""
    return str(value).encode()


def random_command(rng: random.Random | None = None) -> bytes:
    """A command unlikely to be submitted twice in one test."""
    return command((rng or random).getrandbits(62))


def wire_tag(message: object) -> int:
    """The extension type code a typed wire message travels under (see ``rpc/codec.py``)."""
    code = msgpack.unpackb(pack(message), ext_hook=lambda code, data: code)
    assert isinstance(code, int)
    return code


def raft_reply_tags() -> frozenset[int]:
    """Tags of the Raft reply messages, so a profile can treat them as replies."""
    from kvraft.raft.messages import AppendEntriesReply, InstallSnapshotReply, RequestVoteReply

    return frozenset(
        {
            wire_tag(RequestVoteReply(src=0, dst=1, term=1, vote_granted=False, pre_vote=False)),
            wire_tag(
                AppendEntriesReply(
                    src=0,
                    dst=1,
                    term=1,
                    success=False,
                    match_index=0,
                    conflict_index=0,
                    conflict_term=0,
                )
            ),
            wire_tag(
                InstallSnapshotReply(
                    src=0, dst=1, term=1, last_included_index=0, next_offset=0, done=False
                )
            ),
        }
    )


def unreliable_profile() -> NetworkProfile:
    """The classic unreliable network for Raft traffic: 10% lost, 0-27 ms delays.

    The ``reordering`` profile is exactly this for Raft messages, whose replies
    are notifies that it does not hold back (its ``reply_tags`` is empty).
    """
    return REORDERING


def long_reordering_profile() -> NetworkProfile:
    """Unreliable plus the classic long reordering: 2/3 of Raft replies held 0.2-2.2 s."""
    import dataclasses

    return dataclasses.replace(REORDERING, name="long-reordering", reply_tags=raft_reply_tags())


class RaftTester:
    """The classic tester's helpers over a :class:`Cluster` started with ``--test-hooks``."""

    def __init__(self, cluster: Cluster, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.cluster = cluster
        self.n = cluster.n
        self.call_timeout_s = call_timeout_s
        self.connected = [True] * self.n
        #: How long :meth:`one` tries before failing (the classic 10 s).
        self.one_deadline_s = ONE_DEADLINE_S
        #: index -> command, for every entry any server reported committed.
        self.known: dict[int, bytes] = {}
        self._loop = EventLoopThread(name=f"raft-tester-{cluster.name}")
        self._rpcs: dict[int, RpcClient] = {}
        self._sender = client_sender("tester")
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        """Run ``coro`` on the tester's loop (where :meth:`call` may be awaited); its result."""
        if self._closed:
            coro.close()
            raise RuntimeError("tester is closed")
        return self._loop.run(coro, timeout_s)

    async def call(self, i: int, method: str, args: Any = None) -> Any:
        """One hook call on server ``i``'s private address; None if it gives no answer.

        No answer is a connection that cannot be opened or drops (a killed or
        restarting server) or a timeout. An error reply (a hook that raised, a
        server without ``--test-hooks``) is raised: that is a bug, not a fault.
        """
        rpc = self._rpcs.get(i)
        if rpc is None:
            rpc = self._rpcs[i] = RpcClient(self.cluster.private_addresses[i], self._sender)
        try:
            return await rpc.call(method, args, self.call_timeout_s)
        except (ConnectionLost, CallTimeout) as exc:
            log.debug("n%d gave no answer to %s: %s", i, method, exc)
            return None

    def close(self) -> None:
        """Stop the tester's loop and close the cluster (idempotent)."""
        if not self._closed:

            async def close_all() -> None:
                for rpc in self._rpcs.values():
                    rpc.close()

            try:
                self.run(close_all(), 5.0)
            finally:
                self._closed = True
                self._loop.stop()
        self.cluster.close()

    def __enter__(self) -> RaftTester:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- the hooks

    def state(self, i: int) -> tuple[int, bool] | None:
        """``(term, is_leader)`` of server ``i``, or None if it gives no answer."""
        return self.run(self._state(i))

    async def _state(self, i: int) -> tuple[int, bool] | None:
        got = await self.call(i, "raft.state")
        return None if got is None else (int(got[0]), bool(got[1]))

    def submit(self, i: int, cmd: bytes) -> tuple[int, int] | None:
        """``raft.submit`` on server ``i``: ``(index, term)``, or None (not leader / no answer)."""
        return self.run(self._submit(i, cmd))

    async def _submit(self, i: int, cmd: bytes) -> tuple[int, int] | None:
        got = await self.call(i, "raft.submit", cmd)
        return None if got is None else (int(got[0]), int(got[1]))

    def submit_many(self, i: int, cmds: Sequence[bytes]) -> list[tuple[int, int] | None]:
        """Submit ``cmds`` to server ``i`` concurrently (all in flight at once)."""

        async def go() -> list[tuple[int, int] | None]:
            return list(await asyncio.gather(*(self._submit(i, c) for c in cmds)))

        return self.run(go())

    def committed(self, i: int, index: int) -> bytes | None:
        """The command server ``i`` committed at ``index`` (b"" for a no-op), else None."""
        return self.run(self._committed(i, index))

    async def _committed(self, i: int, index: int) -> bytes | None:
        got = await self.call(i, "raft.committed", index)
        if got is None:
            return None
        assert isinstance(got, bytes), f"n{i}: raft.committed({index}) answered {got!r}"
        seen = self.known.setdefault(index, got)
        assert seen == got, (
            f"committed values differ at index {index}: n{i} has {got!r}, "
            f"another server committed {seen!r}"
        )
        return got

    def status(self, i: int) -> dict[str, Any] | None:
        """Server ``i``'s ``status`` row (role, term, commit index, ...), or None."""
        row: dict[str, Any] | None = self.run(self.call(i, "status"))
        return row

    def statuses(self) -> list[dict[str, Any] | None]:
        async def go() -> list[dict[str, Any] | None]:
            return list(await asyncio.gather(*(self.call(i, "status") for i in range(self.n))))

        return self.run(go())

    def campaign(self, i: int) -> None:
        self.run(self.call(i, "raft.campaign"))

    # ---------------------------------------------------------- faults, processes

    def disconnect(self, i: int) -> None:
        log.info("disconnect n%d", i)
        self.connected[i] = False
        self.cluster.disconnect(i)

    def connect(self, i: int) -> None:
        log.info("connect n%d", i)
        self.connected[i] = True
        self.cluster.reconnect(i)

    def crash(self, i: int) -> None:
        """Disconnect and SIGKILL server ``i`` (the classic ``crash1``)."""
        log.info("crash n%d", i)
        self.disconnect(i)
        self.cluster.kill(i)

    def start(self, i: int, *, wait: bool = True) -> None:
        """Restart server ``i`` from its data dir; it stays disconnected (classic ``start1``)."""
        log.info("start n%d", i)
        self.cluster.restart(i, wait=wait)

    def alive(self, i: int) -> bool:
        return self.cluster.is_alive(i)

    def up(self) -> list[int]:
        """Servers that are connected and running: the ones the helpers talk to."""
        return [i for i in range(self.n) if self.connected[i] and self.alive(i)]

    # ----------------------------------------------------------- classic checks

    def states(self, ids: Sequence[int]) -> dict[int, tuple[int, bool]]:
        """``(term, is_leader)`` of each of ``ids`` that answers."""

        async def go() -> list[tuple[int, bool] | None]:
            return list(await asyncio.gather(*(self._state(i) for i in ids)))

        return {i: s for i, s in zip(ids, self.run(go()), strict=True) if s is not None}

    def check_one_leader(self, timeout_s: float = LEADER_DEADLINE_S) -> int:
        """The leader among connected servers, waiting up to ``timeout_s`` for one.

        Fails if two connected servers lead the same term; returns the leader of
        the highest term when several terms have one (a deposed leader that has
        not heard yet).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            leaders: dict[int, list[int]] = {}
            for i, (term, is_leader) in self.states(self.up()).items():
                if is_leader:
                    leaders.setdefault(term, []).append(i)
            for term, ids in leaders.items():
                assert len(ids) == 1, f"term {term} has {len(ids)} (>1) leaders: {ids}"
            if leaders:
                return leaders[max(leaders)][0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"expected one leader, got none within {timeout_s}s")
            time.sleep(0.05)

    def check_terms(self, timeout_s: float = 1.0) -> int:
        """The term every connected server agrees on (waits briefly for stragglers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            terms = {i: s[0] for i, s in self.states(self.up()).items()}
            if len(set(terms.values())) == 1:
                return next(iter(terms.values()))
            if time.monotonic() >= deadline:
                raise AssertionError(f"servers disagree on term: {terms}")
            time.sleep(0.02)

    def check_no_leader(self) -> None:
        """No connected server believes it is the leader."""
        for i, (term, is_leader) in self.states(self.up()).items():
            assert not is_leader, f"expected no leader among connected servers, n{i} leads {term}"

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many running servers committed ``index``, and the command there."""

        async def go() -> list[bytes | None]:
            ids = [i for i in range(self.n) if self.alive(i)]
            return list(await asyncio.gather(*(self._committed(i, index) for i in ids)))

        found = [c for c in self.run(go()) if c is not None]
        return len(found), (found[0] if found else None)

    def one(self, cmd: bytes, expected_servers: int, retry: bool) -> int:
        """Submit ``cmd`` until a leader takes it and ``expected_servers`` commit it there.

        The classic ``one()``: try each connected server in turn; once one
        accepts, wait up to 2 s for the command to be committed at the index it
        returned by at least ``expected_servers``. If another command lands
        there instead, or too few commit it, try again if ``retry``, else fail.
        Gives up after :attr:`one_deadline_s` (10 s). Returns the index.
        """
        started = time.monotonic()
        starts = 0
        while time.monotonic() - started < self.one_deadline_s:
            index = None
            for _ in range(self.n):
                starts = (starts + 1) % self.n
                if not (self.connected[starts] and self.alive(starts)):
                    continue
                submitted = self.submit(starts, cmd)
                if submitted is not None:
                    index = submitted[0]
                    break
            if index is not None:
                agreed = time.monotonic()
                pause = 0.02  # backs off a little: many threads may be polling at once
                while time.monotonic() - agreed < ONE_AGREEMENT_S:
                    nd, cmd1 = self.n_committed(index)
                    if nd > 0 and nd >= expected_servers and cmd1 == cmd:
                        return index
                    time.sleep(pause)
                    pause = min(pause * 1.5, 0.1)
                if not retry:
                    nd, cmd1 = self.n_committed(index)
                    raise AssertionError(
                        f"one({cmd!r}) failed to reach agreement at index {index}: "
                        f"{nd} of {expected_servers} wanted committed {cmd1!r}"
                    )
            else:
                time.sleep(0.05)
        raise AssertionError(f"one({cmd!r}) failed to reach agreement in {self.one_deadline_s}s")

    def wait(self, index: int, n: int, start_term: int | None) -> bytes | None:
        """Wait for ``n`` servers to commit ``index``; its command.

        Returns None early if some server moved past ``start_term`` (the
        leader changed, so the entry may never commit). Fails if too few commit.
        """
        pause = 0.01
        for _ in range(30):
            nd, _ = self.n_committed(index)
            if nd >= n:
                break
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            if start_term is not None:
                for term, _leader in self.states(list(range(self.n))).values():
                    if term > start_term:
                        return None
        nd, cmd = self.n_committed(index)
        assert nd >= n, f"only {nd} decided for index {index}; wanted {n}"
        return cmd

    def check_logs(self) -> int:
        """Every committed entry of every running server agrees; the highest commit index.

        Reads each server's whole committed log through the hook (every answer
        also goes through the ``known`` check).
        """
        rows = self.statuses()
        top = 0
        sem: asyncio.Semaphore | None = None

        async def read(i: int, index: int) -> None:
            assert sem is not None
            async with sem:
                await self._committed(i, index)

        async def go() -> None:
            nonlocal sem
            sem = asyncio.Semaphore(64)
            jobs = []
            for i, row in enumerate(rows):
                if row is None:
                    continue
                first = max(int(row["snapshot_index"]) + 1, 1)
                for index in range(first, int(row["commit_index"]) + 1):
                    jobs.append(read(i, index))
            await asyncio.gather(*jobs)

        for row in rows:
            if row is not None:
                top = max(top, int(row["commit_index"]))
        self.run(go(), timeout_s=120.0)
        return top

    # --------------------------------------------------------------- counting

    def raft_messages(self) -> int:
        """Raft messages that reached a proxy since the last reset (each crosses one)."""
        return self.cluster.stats().total("notify", method="raft").seen

    def raft_messages_by_sender(self) -> dict[str, int]:
        """Raft messages seen so far, by sender (``p0``, ``p1``, ...)."""
        stats = self.cluster.stats().select("notify", method="raft")
        return {sender: counts.seen for sender, counts in stats.by_sender().items()}

    def raft_bytes(self) -> int:
        return self.cluster.stats().total("notify", method="raft").bytes_seen


def summary(samples: Sequence[float]) -> str:
    """``median X ms, max Y ms (n=N)`` of samples in seconds."""
    return (
        f"median {statistics.median(samples) * 1000:.0f} ms, "
        f"max {max(samples) * 1000:.0f} ms (n={len(samples)})"
    )
