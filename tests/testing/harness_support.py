"""Helpers for the harness tests: calling servers, bursts of calls, an in-process backend.

No pytest-asyncio: synchronous tests run coroutines with ``asyncio.run`` on the
test's thread, while the proxies (and the in-process backend) run on their own
background loops, as they would for any synchronous test of the product.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvraft.errors import RpcError
from kvraft.loop_thread import EventLoopThread
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender, peer_sender, sender_peer_id
from kvraft.rpc.peer_auth import Membership, PeerKey
from kvraft.rpc.server import RpcServer
from kvraft.rpc.wire_errors import UnknownMethod

HOST = "127.0.0.1"

# Every backend is node BACKEND_ID of a cluster whose peers 0..9 prove this
# key, as real nodes do: the proxy forwards their handshakes like any frame.
BACKEND_KEY = PeerKey(b"backend-test-secret-0123456789", "proxy-test")
BACKEND_ID = 100


def peer_client(address: str, peer_id: int) -> RpcClient:
    """An RpcClient that authenticates to a backend as peer ``peer_id``."""
    return RpcClient(address, peer_sender(peer_id), peer_key=BACKEND_KEY, server_peer_id=BACKEND_ID)


async def acall(
    address: str,
    method: str,
    args: Any = None,
    *,
    timeout_s: float = 2.0,
    sender: str | None = None,
) -> Any:
    """One call on a fresh connection (closed afterwards); a peer sender authenticates first."""
    sender = sender or client_sender("test")
    peer_id = sender_peer_id(sender)
    client = RpcClient(address, sender) if peer_id is None else peer_client(address, peer_id)
    try:
        return await client.call(method, args, timeout_s)
    finally:
        client.close()


def call(
    address: str,
    method: str,
    args: Any = None,
    *,
    timeout_s: float = 2.0,
    sender: str | None = None,
) -> Any:
    """Synchronous :func:`acall`."""
    return asyncio.run(acall(address, method, args, timeout_s=timeout_s, sender=sender))


def outcome(
    address: str,
    method: str,
    args: Any = None,
    *,
    timeout_s: float = 2.0,
    sender: str | None = None,
) -> str:
    """``"ok"`` or the name of the RPC error a call ended with (``CallTimeout``, ...)."""
    try:
        call(address, method, args, timeout_s=timeout_s, sender=sender)
    except RpcError as exc:
        return type(exc).__name__
    return "ok"


@dataclass
class Answer:
    """One call of a burst: its index, result or error, round trip and arrival rank."""

    index: int
    ok: bool
    result: Any = None
    error: str | None = None
    rtt_s: float = math.inf
    rank: int | None = None  # order of arrival among the answered calls


async def burst(
    address: str,
    method: str,
    args: list[Any],
    *,
    timeout_s: float,
    sender: str | None = None,
    then: Callable[[], None] | None = None,
) -> list[Answer]:
    """Send every call at once on one connection; record what came back, and when.

    The connection is opened first with one ``echo`` call, then ``then()``
    runs (a test switches its faults on there), then the burst goes out.
    """
    client = RpcClient(address, sender or client_sender("burst"))
    loop = asyncio.get_running_loop()
    ranks = iter(range(len(args)))
    await client.call("echo", None, 5.0)
    if then is not None:
        then()

    async def one(index: int, arg: Any) -> Answer:
        start = loop.time()
        try:
            result = await client.call(method, arg, timeout_s)
        except RpcError as exc:
            return Answer(index, False, error=type(exc).__name__)
        return Answer(index, True, result, rtt_s=loop.time() - start, rank=next(ranks))

    try:
        return await asyncio.gather(*(one(i, a) for i, a in enumerate(args)))
    finally:
        client.close()


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether ``observed`` successes of ``n`` fit probability ``p`` (normal approximation)."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(observed - n * p) <= sigmas * sd + 1


def rate_message(what: str, observed: int, n: int, p: float) -> str:
    return f"{what}: {observed}/{n} = {observed / n:.3f}, expected {p:.3f} within 5 sigma"


def inversions(ranks: list[int]) -> int:
    """Pairs (i < j) whose arrival ranks are reversed (O(n^2); fine for ~1000)."""
    return sum(1 for i, a in enumerate(ranks) for b in ranks[i + 1 :] if a > b)


# ------------------------------------------------------------ in-process backend


class CountingHandler:
    """A backend that counts what reached it: ``echo``, ``incr``, ``slow``, notifies."""

    def __init__(self) -> None:
        self.handled: Counter[str] = Counter()
        self.notified: Counter[str] = Counter()
        self.counter = 0

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        self.handled[method] += 1
        if method == "echo":
            return args
        if method == "incr":
            self.counter += 1
            return self.counter
        if method == "slow":
            await asyncio.sleep(float(args))
            return args
        raise UnknownMethod(method)

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        self.notified[sender] += 1


class Backend:
    """An RpcServer with a :class:`CountingHandler` on a loop thread of its own."""

    def __init__(self) -> None:
        self.handler = CountingHandler()
        membership = Membership(BACKEND_KEY, BACKEND_ID, frozenset(range(10)))
        self.server = RpcServer(self.handler, name="backend", peer_auth=membership)
        self.thread = EventLoopThread("backend")
        self.thread.run(self.server.start(HOST, 0))
        self.address = self.server.address

    def close(self) -> None:
        self.thread.run(self.server.close())
        self.thread.stop()
