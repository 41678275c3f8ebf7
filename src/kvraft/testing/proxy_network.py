"""The proxies of a cluster, run on a background event-loop thread for synchronous tests.

:class:`ProxyNetwork` starts one :class:`~kvraft.testing.proxy.FaultProxy` per
server on an asyncio loop in a thread of its own
(:class:`~kvraft.loop_thread.EventLoopThread`), so tests that never touch
asyncio can put proxies in front of real server processes; its methods and
its control's are thread-safe.
"""

from __future__ import annotations

import contextlib
import threading

from kvraft.loop_thread import EventLoopThread
from kvraft.testing.faults import RELIABLE, FaultState, NetworkControl, NetworkProfile, TrafficStats
from kvraft.testing.proxy import FaultProxy


class ProxyNetwork:
    """A set of :class:`FaultProxy` sharing one control, on a background loop thread.

    The synchronous face of the proxies: ``add(i, private_address)`` returns
    the public address to give peers and clients; faults are switched with
    :attr:`control` (``network.control.disconnect(2)``), counters read with
    :meth:`stats`. Every method is thread-safe.
    """

    def __init__(
        self,
        profile: str | NetworkProfile = RELIABLE,
        *,
        seed: int | None = None,
        host: str = "127.0.0.1",
        control: NetworkControl | None = None,
    ) -> None:
        self.control = control if control is not None else NetworkControl(profile, seed=seed)
        self.host = host
        self.proxies: dict[int, FaultProxy] = {}
        self._lock = threading.Lock()
        self._thread = EventLoopThread(name="kvraft-proxy")
        self._closed = False

    def add(self, server_id: int, upstream: str, *, port: int = 0) -> str:
        """Start the proxy for server ``server_id`` in front of ``upstream``; its address."""
        proxy = FaultProxy(server_id, upstream, self.control, host=self.host, port=port)
        with self._lock:
            if self._closed:
                raise RuntimeError("network is closed")
            if server_id in self.proxies:
                raise ValueError(f"server {server_id} already has a proxy")
            self.proxies[server_id] = proxy
        try:
            self._thread.run(proxy.start())
        except BaseException:
            with self._lock:
                self.proxies.pop(server_id, None)
            raise
        return proxy.address

    def address(self, server_id: int) -> str:
        return self.proxies[server_id].address

    def stats(self, server_id: int | None = None) -> TrafficStats:
        """Counters of one proxy or of all of them."""
        return self.control.stats(server_id)

    def reset_stats(self) -> None:
        self.control.reset_stats()

    def drop_connections(self, server_id: int) -> None:
        """Reset every connection through proxy ``server_id`` (thread-safe)."""
        proxy = self.proxies[server_id]
        self._thread.loop.call_soon_threadsafe(proxy.drop_connections)

    @property
    def state(self) -> FaultState:
        return self.control.state

    def close(self) -> None:
        """Close every proxy and stop the loop thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proxies = list(self.proxies.values())
        if self._thread.running:
            for proxy in proxies:
                with contextlib.suppress(Exception):
                    self._thread.run(proxy.close(), timeout_s=5.0)
        self._thread.stop()

    def __enter__(self) -> ProxyNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
