"""``--metrics-listen``: ``/metrics`` and ``/health`` over HTTP/1.1, on the node's own loop.

A small GET-only responder of our own rather than prometheus_client's
``start_http_server``: that one runs a ``ThreadingHTTPServer`` on threads of
its own, with no bound on connections, no timeout on a slow request line
and no limit on header size (``http.server`` reads up to 64 KiB per line
and 100 headers per request, per thread, forever). Every port is reachable
by a hostile process (DESIGN §2), so this one has written bounds, each
tested at the bound and one past it (``tests/server/test_metrics_http.py``):

- a request's head (request line and headers, through the blank line) is at
  most :data:`MAX_REQUEST_HEAD_BYTES`; more answers 431 and closes;
- the head must arrive within :data:`REQUEST_TIMEOUT_S` of the connection
  opening, and the response be taken by the client within as long again;
  otherwise 408 (if the head was late) and the connection closes;
- at most :data:`MAX_HTTP_CONNECTIONS` connections at once; one more is
  closed at once, unanswered;
- one request per connection (``Connection: close``): after its answer the
  server half-closes and drops whatever else the client sends until it
  closes, for at most :data:`REQUEST_TIMEOUT_S` (a reset would destroy the
  answer in flight).

Running on the node's event loop keeps the metrics consistent with the node
(read between two Ready steps, never while one is half-applied) and costs no
thread; a scrape's work is building the text, a few hundred lines.

Answers: ``GET /metrics`` 200 with the Prometheus text; ``GET /health`` 200
``{"health": "true"}`` or 503 ``{"health": "false", "reason": ...}``; any
other path 404; any other method 405 (``Allow: GET``); a request line that
does not parse 400. A query string is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from kvraft.server.health import Health

log = logging.getLogger("kvraft.metrics")

# Far above a scraper's or curl's request (~100-300 bytes), far below memory worries.
MAX_REQUEST_HEAD_BYTES = 8192
# A scraper sends its request at once; a slow-loris one waits for nothing.
REQUEST_TIMEOUT_S = 5.0
# Prometheus, an operator's curl and a load balancer's health check need a handful.
MAX_HTTP_CONNECTIONS = 16

_READ_CHUNK = 4096
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class MetricsListenError(OSError):
    """The metrics address could not be listened on (told apart from the RPC port's)."""


class RequestTooLarge(Exception):
    """The request head passed :data:`MAX_REQUEST_HEAD_BYTES`."""


class MetricsHttpServer:
    """Serves ``render_metrics()`` at ``/metrics`` and ``health()`` at ``/health``.

    ``name`` prefixes its log lines (``n0``). The bounds are parameters so
    tests can reach them quickly; a server uses the module's defaults.
    """

    def __init__(
        self,
        render_metrics: Callable[[], bytes],
        health: Callable[[], Health],
        *,
        content_type: str,
        name: str = "metrics",
        max_head_bytes: int = MAX_REQUEST_HEAD_BYTES,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_HTTP_CONNECTIONS,
    ) -> None:
        self.render_metrics = render_metrics
        self.health = health
        self.content_type = content_type
        self.name = name
        self.max_head_bytes = max_head_bytes
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: Connections closed unanswered because max_connections were open.
        self.refused_connections = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a port); OSError if it is taken."""
        assert self._server is None, "already started"
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)

    @property
    def address(self) -> str:
        """The ``host:port`` listened on."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=1.0)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._handlers) >= self.max_connections:
            self.refused_connections += 1
            if self.refused_connections % 100 == 1:
                log.warning(
                    "%s: metrics port refused a connection: %d open, the maximum"
                    " (%d refused so far; logged once per 100)",
                    self.name,
                    len(self._handlers),
                    self.refused_connections,
                )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
            await self._finish(reader, writer)
            writer.close()  # sends what is still buffered, then closes
            async with asyncio.timeout(self.timeout_s):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()  # nothing left to send, or a client that stopped reading

    async def _finish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close after the response and discard input until the client closes.

        Closing a socket with unread input sends a reset, which can destroy the
        response before the client reads it (a 431 after a long head); so the
        response is followed by a FIN, and what the client still sends is read
        and dropped until it closes, for at most ``timeout_s``.
        """
        if writer.transport.is_closing():
            return
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                while await reader.read(_READ_CHUNK):
                    pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                head = await self._read_head(reader)
        except TimeoutError:
            await self._respond(writer, 408, b"request not received in time\n")
            return
        except RequestTooLarge:
            await self._respond(
                writer, 431, f"request head over {self.max_head_bytes} bytes\n".encode()
            )
            return
        if head is None:  # closed before a whole head: nothing to answer
            return
        status, body, content_type, extra = self._route(head)
        await self._respond(writer, status, body, content_type, extra)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request head through its blank line; None at EOF; RequestTooLarge past the bound."""
        buffer = b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > self.max_head_bytes:
                    raise RequestTooLarge
                return buffer[:end]
            if len(buffer) >= self.max_head_bytes:
                raise RequestTooLarge
            chunk = await reader.read(min(_READ_CHUNK, self.max_head_bytes + 4 - len(buffer)))
            if not chunk:
                return None
            buffer += chunk

    def _route(self, head: bytes) -> tuple[int, bytes, str, str]:
        """(status, body, content type, extra header lines) for a request head."""
        text = "text/plain; charset=utf-8"
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, b"bad request line\n", text, ""
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return 405, b"only GET\n", text, "Allow: GET\r\n"
        if target == b"/metrics":
            return 200, self.render_metrics(), self.content_type, ""
        if target == b"/health":
            verdict = self.health()
            doc = (
                {"health": "true"}
                if verdict.healthy
                else {"health": "false", "reason": verdict.reason}
            )
            body = (json.dumps(doc) + "\n").encode()
            return (200 if verdict.healthy else 503), body, "application/json", ""
        return 404, b"not found: try /metrics or /health\n", text, ""

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: str = "",
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await writer.drain()  # a client that does not read is dropped after this
