"""The client's half of the data API: what each answer becomes, Maybe after resends, bad arguments.

A scripted one-node server answers each call with the next scripted reply, or
never (a lost reply), so each test knows exactly what the client saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from kvraft import Client, Compare, TxnPut, TxnSet
from kvraft.errors import InvalidArgument, Maybe, NoKey, ProtocolError, VersionMismatch
from kvraft.kv_protocol import (
    DeleteOk,
    DeleteRangeOp,
    KeyValue,
    NoKeyResult,
    RangeOp,
    RangeResult,
    SetOk,
    TxnOpFailedResult,
    TxnResult,
    VersionMismatchResult,
    prefix_end,
)
from kvraft.loop_thread import EventLoopThread
from kvraft.rpc.server import RpcServer

HANG = object()  # a reply that never comes


class Scripted:
    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.calls: list[tuple[str, Any]] = []

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: Any = None) -> Any:
        self.calls.append((method, args))
        reply = self.replies.pop(0)
        if reply is HANG:
            await asyncio.Event().wait()
        return reply

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: Any = None) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[Scripted, Client]]:
    handler = Scripted()
    thread = EventLoopThread(name="scripted-kv")
    server = RpcServer(handler, name="scripted-kv")  # type: ignore[arg-type]
    thread.run(server.start("127.0.0.1", 0))
    client = Client([server.address], deadline=20, call_timeout_s=0.3)
    try:
        yield handler, client
    finally:
        client.close()
        thread.run(server.close())
        thread.stop()


def test_each_answer_becomes_the_documented_value(served: tuple[Scripted, Client]) -> None:
    handler, c = served
    kv = KeyValue("a", "1", 1, 2, 2, 0)
    handler.replies = [SetOk(3, 9), DeleteOk(1, 10), DeleteOk(4, 11), RangeResult((kv,), 11, True)]
    assert c.set("a", "1") == 3
    assert c.delete("a", 2) == 10
    assert c.delete_range(prefix="a/") == 4
    assert c.range(start="a", limit=1) == RangeResult((kv,), 11, True)
    sent = [args for _, args in handler.calls]
    assert isinstance(sent[2], DeleteRangeOp) and (sent[2].start, sent[2].end) == ("a/", "a0")
    assert isinstance(sent[3], RangeOp) and (sent[3].start, sent[3].end, sent[3].limit) == (
        "a",
        "",
        1,
    )


def test_delete_errors_and_maybe_after_a_lost_reply(served: tuple[Scripted, Client]) -> None:
    handler, c = served
    handler.replies = [SetOk(1, 1), VersionMismatchResult(2), NoKeyResult()]
    c.set("warm", "up")  # the session's first request is behind us
    with pytest.raises(VersionMismatch):
        c.delete("k", 1)
    with pytest.raises(NoKey):
        c.delete("k", 1)
    fresh = Client(c._async.servers, deadline=20, call_timeout_s=0.3)
    try:
        handler.replies = [HANG, VersionMismatchResult(2)]
        with pytest.raises(Maybe):  # a first request resent: the session cannot vouch
            fresh.delete("k", 1)
    finally:
        fresh.close()


def test_txn_results_and_failures(served: tuple[Scripted, Client]) -> None:
    handler, c = served
    ok = TxnResult(True, (SetOk(1, 5),), 5)
    handler.replies = [ok, TxnOpFailedResult(True, 1, 3), TxnOpFailedResult(False, 0, 0)]
    assert c.txn([Compare("a", "exists", "==", False)], [TxnSet("a", "1")]) == ok
    with pytest.raises(VersionMismatch, match=r"success\[1\].*version 3"):
        c.txn(success=[TxnSet("b", "1"), TxnPut("a", "2", 1)])
    with pytest.raises(NoKey, match=r"failure\[0\]"):
        c.txn(failure=[TxnPut("a", "2", 1)])
    handler.replies = [TxnResult(False, (), 5)]
    assert not c.txn([Compare("a", "exists", "==", True)]).succeeded  # sent once: no Maybe
    fresh = Client(c._async.servers, deadline=20, call_timeout_s=0.3)
    try:
        handler.replies = [HANG, TxnResult(False, (), 5)]
        with pytest.raises(Maybe):
            fresh.txn([Compare("a", "exists", "==", False)], [TxnSet("a", "1")])
    finally:
        fresh.close()


def test_a_wrong_answer_is_a_protocol_error(served: tuple[Scripted, Client]) -> None:
    handler, c = served
    handler.replies = [DeleteOk(1, 1), SetOk(1, 1)]
    with pytest.raises(ProtocolError):
        c.set("a", "1")
    with pytest.raises(ProtocolError):
        c.range(prefix="")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"prefix": "a", "start": "a"}, {"prefix": "a", "end": "b"}, {"prefix": 1}],
)
def test_a_range_needs_a_prefix_or_a_start(
    served: tuple[Scripted, Client], kwargs: dict[str, Any]
) -> None:
    handler, c = served
    with pytest.raises(InvalidArgument):
        c.range(**kwargs)
    with pytest.raises(InvalidArgument):
        c.delete_range(**kwargs)
    assert handler.calls == []


def test_prefix_end_is_what_the_client_sends(served: tuple[Scripted, Client]) -> None:
    handler, c = served
    handler.replies = [RangeResult((), 0, False)]
    c.range(prefix="\U0010ffff")
    ((_, op),) = handler.calls
    assert (op.start, op.end) == ("\U0010ffff", prefix_end("\U0010ffff")) == ("\U0010ffff", "")
