"""Client load from the client host: putters on keys of their own, readers of everyone's keys.

``Load(servers).start(loop)`` runs on a :class:`NamespaceLoop` (so every
connection leaves from the client's namespace): ``PUTTERS`` coroutines on
``CLIENTS`` AsyncClients each put versioned values on their own key, one put
at a time, and ``READERS`` coroutines get random keys. Every operation goes
into one :class:`History` for the linearizability checker. Counted as failed:
any operation that raises to its caller other than a get's ``NoKey`` (the
clients retry NotLeader, timeouts and lost connections inside; Unavailable
or Maybe reaching us is a failure). ``completed`` grows as operations finish,
so a test can wait for progress while it breaks things.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from dataclasses import dataclass, field

from kvraft.client.async_client import AsyncClient
from kvraft.errors import NoKey
from kvraft.testing.history import History
from tests.support.rolling import put_own_key

from .network import NamespaceLoop

PUTTERS = 24
READERS = 4
CLIENTS = 4
# An operation that takes this long reaches its caller as Unavailable: a failure.
OP_DEADLINE_S = 30.0
CALL_TIMEOUT_S = 1.0


@dataclass
class Load:
    servers: list[str]
    putters: int = PUTTERS
    readers: int = READERS
    history: History = field(default_factory=History)
    put_latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    completed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _future: concurrent.futures.Future[None] | None = None

    def start(self, loop: NamespaceLoop) -> None:
        self._future = loop.submit(self._run())

    def stop(self, timeout_s: float = 2 * OP_DEADLINE_S) -> None:
        """Stop after the operations in flight, and wait for them; re-raises a crash."""
        self._stop.set()
        if self._future is not None:
            self._future.result(timeout_s)

    async def _run(self) -> None:
        clients = [
            AsyncClient(self.servers, deadline=OP_DEADLINE_S, call_timeout_s=CALL_TIMEOUT_S)
            for _ in range(CLIENTS)
        ]
        try:
            await asyncio.gather(
                *(
                    put_own_key(
                        clients[i % CLIENTS],
                        f"k{i}",
                        self.history,
                        self._stop,
                        self.failures,
                        self._record_put,
                    )
                    for i in range(self.putters)
                ),
                *(self._reader(clients[i % CLIENTS], i) for i in range(self.readers)),
            )
        finally:
            for client in clients:
                await client.close()

    def _record_put(self, latency_s: float) -> None:
        self.put_latencies.append(latency_s)
        self.completed += 1

    async def _reader(self, client: AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            key = f"k{rng.randrange(self.putters)}"
            try:
                await self.history.arecord_get(client.client_id, key, lambda k=key: client.get(k))  # type: ignore[misc]
            except NoKey:
                pass  # an answer: that putter has not written yet
            except Exception as exc:
                self.failures.append(f"get {key}: {type(exc).__name__}: {exc}")
                return
            self.completed += 1
