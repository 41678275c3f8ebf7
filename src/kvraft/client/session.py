"""The client's half of a session (Raft thesis §6.3): request numbers and what is acknowledged.

A session numbers its requests 1, 2, 3, ... and tells the server, with each,
``acked_below``: the lowest id still open (in flight or waiting to be sent),
so every lower id has had its answer and the server may forget its result
and refuse its copies (``kvraft.server.sessions``). Two rules keep what the
server stores bounded and its answers trustworthy:

- at most ``MAX_IN_FLIGHT_PER_CLIENT`` ids are open past ``acked_below``: a
  request waits to be sent until the window allows it, rather than being
  refused by the server;
- the first request of a session is sent alone, until it ends. A server
  cannot tell a new client from one whose session it forgot, except by
  ``acked_below``: only a request with nothing acknowledged may open a
  session. Sending the first alone makes that one request the only one
  whose copies could open a forgotten session again, and the client treats
  its retries as of unknown outcome (as before sessions existed).
"""

from __future__ import annotations

import asyncio

from kvraft.kv_protocol import FIRST_REQUEST_ID, MAX_IN_FLIGHT_PER_CLIENT


class ClientSession:
    """Request numbering of one session of an :class:`~kvraft.AsyncClient` (one event loop)."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self._next = FIRST_REQUEST_ID
        # Ids taken and not ended, ascending (dicts keep insertion order).
        self._open: dict[int, None] = {}
        self._first_ended = False
        self._changed = asyncio.Event()

    def acked_below(self) -> int:
        """The lowest open id, or the next id if none is open."""
        return next(iter(self._open), self._next)

    def _may_send(self, request_id: int) -> bool:
        lowest = self.acked_below()
        if not self._first_ended and request_id != lowest:
            return False
        return request_id - lowest < MAX_IN_FLIGHT_PER_CLIENT

    async def begin(self) -> int:
        """Take the next request id and wait until it may be sent; pair with :meth:`end`."""
        request_id = self._next
        self._next += 1
        self._open[request_id] = None
        try:
            while not self._may_send(request_id):
                await self._changed.wait()
        except BaseException:
            self.end(request_id)
            raise
        return request_id

    def end(self, request_id: int) -> None:
        """The request is over (answered or given up): the server may forget it."""
        del self._open[request_id]
        self._first_ended = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
