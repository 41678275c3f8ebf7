"""AsyncClient's side of sessions and of Busy, against an in-process stand-in server.

The stand-in is an RpcServer whose handler applies commands through the real
:class:`~kvraft.server.sessions.Sessions` and :class:`KVStore`, with scripted
faults: answers Busy, replies lost after applying, sessions forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kvraft import AsyncClient, Busy, Maybe, Unavailable
from kvraft.client.session import ClientSession
from kvraft.kv_protocol import MAX_IN_FLIGHT_PER_CLIENT, Op, SessionExpiredResult
from kvraft.rpc.server import RpcServer
from kvraft.server.kvstore import KVStore
from kvraft.server.sessions import Sessions


class StandIn:
    """A one-node 'cluster': applies ops through sessions; ``fault(op, n)`` may interfere."""

    def __init__(self, fault: Callable[[Op, int], str | None] = lambda op, n: None) -> None:
        self.sessions = Sessions()
        self.store = KVStore()
        self.index = 0
        self.received: list[Op] = []
        self.fault = fault

    async def handle_call(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> Any:
        self.received.append(args)
        what = self.fault(args, len(self.received))
        if what == "busy":
            raise Busy("stand-in is busy")
        if what == "forget":
            self.sessions = Sessions()
            return SessionExpiredResult()
        self.index += 1
        self.sessions.advance(self.index)
        result = self.sessions.apply(self.store, args, self.index)
        if what == "lose-reply":
            await asyncio.sleep(10)  # applied, but the reply never comes in time
        return result

    def handle_notify(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> None:
        pass


@asynccontextmanager
async def serving(stand_in: StandIn, **options: Any) -> AsyncIterator[AsyncClient]:
    server = RpcServer(stand_in, name="stand-in")
    await server.start("127.0.0.1", 0)
    client = AsyncClient([server.address], call_timeout_s=0.3, **options)
    try:
        yield client
    finally:
        await client.close()
        await server.close()


def test_a_put_whose_reply_was_lost_gets_its_first_result_on_the_resend_not_maybe() -> None:
    stand_in = StandIn(lambda op, n: "lose-reply" if n == 2 else None)

    async def main() -> None:
        async with serving(stand_in) as client:
            assert await client.put("k", "v", 0) == 1  # the session's first request
            assert await client.put("k", "v2", 1) == 2  # lost reply, resent: PutOk

    asyncio.run(main())
    _, second, resend = stand_in.received
    assert resend == second  # the same (client, request id, acked_below)
    assert (second.request_id, second.acked_below) == (2, 2)
    assert stand_in.store.get("k") == ("v2", 2)


def test_busy_is_backed_off_and_retried_with_the_same_request() -> None:
    stand_in = StandIn(lambda op, n: "busy" if n <= 3 else None)

    async def main() -> None:
        async with serving(stand_in, deadline=10) as client:
            assert await client.put("k", "v", 0) == 1

    asyncio.run(main())
    assert len(stand_in.received) == 4 and len(set(stand_in.received)) == 1


def test_busy_past_the_deadline_is_unavailable() -> None:
    stand_in = StandIn(lambda op, n: "busy")

    async def main() -> None:
        async with serving(stand_in, deadline=0.5) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(Unavailable):
                await client.put("k", "v", 0)
            assert asyncio.get_running_loop().time() - started < 2

    asyncio.run(main())
    assert 2 <= len(stand_in.received) <= 40  # backed off, not a busy loop


def test_a_forgotten_session_starts_a_new_one_and_an_uncertain_put_becomes_maybe() -> None:
    """The one case Maybe is still for: the server lost what the first attempt did."""
    stand_in = StandIn(lambda op, n: {2: "lose-reply", 3: "forget"}.get(n))

    async def main() -> None:
        async with serving(stand_in) as client:
            assert await client.put("k", "v", 0) == 1
            with pytest.raises(Maybe):
                await client.put("k", "v2", 1)  # applied, reply lost, session lost
            assert await client.get("k") == ("v2", 2)

    asyncio.run(main())
    renewed = stand_in.received[3]
    assert renewed.client_id != stand_in.received[0].client_id
    assert (renewed.request_id, renewed.acked_below) == (1, 1)


def test_a_forgotten_session_with_nothing_uncertain_just_continues() -> None:
    stand_in = StandIn(lambda op, n: "forget" if n == 2 else None)

    async def main() -> None:
        async with serving(stand_in) as client:
            assert await client.put("k", "v", 0) == 1
            assert await client.put("k", "v2", 1) == 2

    asyncio.run(main())


def test_concurrent_requests_acknowledge_the_lowest_open_id() -> None:
    stand_in = StandIn()

    async def main() -> None:
        async with serving(stand_in) as client:
            await client.put("first", "v", 0)
            await asyncio.gather(*(client.put(f"k{i}", "v", 0) for i in range(10)))
            await client.get("first")

    asyncio.run(main())
    ops = stand_in.received
    assert [op.request_id for op in ops] == sorted(op.request_id for op in ops)
    assert all(op.acked_below == 2 for op in ops[1:11])  # request 2 was open meanwhile
    assert ops[-1].acked_below == ops[-1].request_id == 12


# ------------------------------------------------------------ ClientSession


def test_a_session_sends_its_first_request_alone() -> None:
    async def main() -> None:
        session = ClientSession("s")
        first = await session.begin()
        second = asyncio.ensure_future(session.begin())
        await asyncio.sleep(0)
        assert not second.done()
        session.end(first)
        assert await second == 2 and session.acked_below() == 2

    asyncio.run(main())


def test_a_session_keeps_at_most_the_window_of_ids_open_past_acked_below() -> None:
    async def main() -> None:
        session = ClientSession("s")
        session.end(await session.begin())
        ids = [await session.begin() for _ in range(MAX_IN_FLIGHT_PER_CLIENT)]
        assert ids[-1] - session.acked_below() == MAX_IN_FLIGHT_PER_CLIENT - 1  # at the bound
        one_past = asyncio.ensure_future(session.begin())
        await asyncio.sleep(0)
        assert not one_past.done()
        session.end(ids[5])  # not the lowest: still no room
        await asyncio.sleep(0)
        assert not one_past.done()
        session.end(ids[0])
        assert await one_past - session.acked_below() == MAX_IN_FLIGHT_PER_CLIENT - 1

    asyncio.run(main())


def test_a_request_cancelled_while_waiting_leaves_the_session_usable() -> None:
    async def main() -> None:
        session = ClientSession("s")
        first = await session.begin()
        waiting = asyncio.ensure_future(session.begin())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert session.acked_below() == first
        session.end(first)
        assert await session.begin() == 3

    asyncio.run(main())
