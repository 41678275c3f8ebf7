"""A fault-injecting TCP proxy in front of one server, acting per message.

One :class:`FaultProxy` stands in front of each server: it listens on the
server's *public* address (the one peers and clients are given) and, for every
connection it accepts, opens one connection to the server's *private* address
(a :class:`~kvraft.testing.links.Link`, which decides each frame's fate). All
proxies of a cluster share one :class:`~kvraft.testing.faults.NetworkControl`,
which holds the fault rules (disconnections, partitions, blocked clients,
random rates) and the counters. A proxy lives on one event loop;
:class:`~kvraft.testing.proxy_network.ProxyNetwork` runs a cluster's proxies
for synchronous tests.
"""

from __future__ import annotations

import asyncio

from kvraft.addresses import split_address
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
from kvraft.testing.faults import NetworkControl, Tally, TrafficStats
from kvraft.testing.links import CallerSide, Link

# The proxy must pass frames the server will refuse (the server's limit is what
# is under test), so it only refuses frames far beyond any sane server's.
PROXY_MAX_FRAME_BYTES = 4 * DEFAULT_MAX_FRAME_BYTES


class FaultProxy:
    """The proxy in front of server ``server_id``; create and use it on one event loop."""

    def __init__(
        self,
        server_id: int,
        upstream: str,
        control: NetworkControl,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = PROXY_MAX_FRAME_BYTES,
    ) -> None:
        split_address(upstream)  # ValueError now rather than on first connection
        self.server_id = server_id
        self.upstream = upstream
        self.control = control
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.name = f"proxy{server_id}"
        self.tally: Tally = control.tally(server_id)
        self.rng = control.rng(server_id)  # used on the proxy's loop only
        self.links: set[Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (port 0 picks a free port); OSError if the port is taken."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: CallerSide(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        """The public ``host:port`` callers use."""
        return f"{self.host}:{self.port}"

    def stats(self) -> TrafficStats:
        """A snapshot of this proxy's counters (thread-safe)."""
        return self.tally.snapshot()

    def reset_stats(self) -> None:
        self.tally.reset()

    def drop_connections(self) -> None:
        """Abort every connection through this proxy (callers see a reset)."""
        for link in list(self.links):
            link.close()

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
