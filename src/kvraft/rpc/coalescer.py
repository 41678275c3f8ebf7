"""Writing frames to a connection: one write per event-loop iteration, not one per frame.

Both ends of a connection write through a :class:`Coalescer`: with 64 calls
in flight, the replies of one iteration leave in one ``send()``. The first
frame of an iteration is written at once, so a lone call waits for nothing.
"""

from __future__ import annotations

import asyncio
import typing


def as_stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """``transport`` typed as the stream transport it is: a cast, not a check."""
    # uvloop's TCPTransport has the whole asyncio.Transport API without
    # subclassing it, so an isinstance check here would refuse every uvloop
    # connection.
    return typing.cast(asyncio.Transport, transport)


class Coalescer:
    """Writes frames to one transport, coalescing those of one loop iteration.

    The first write of an iteration goes straight to the transport, so a lone
    call pays no added latency; later ones in the same iteration are joined
    and written once, from a callback that runs when the iteration ends (with
    64 calls in flight: one send() per batch instead of one per frame).
    Invariant: frames reach the transport in the order written.
    """

    __slots__ = ("_batch", "_batch_bytes", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._batch: list[bytes] | None = None  # None: nothing written this iteration
        self._batch_bytes = 0

    def write(self, data: bytes) -> None:
        """Queue ``data``; the caller checked the transport is not closing."""
        if self._batch is None:
            self.transport.write(data)
            self._batch = []
            self._loop.call_soon(self._flush)
        else:
            self._batch.append(data)
            self._batch_bytes += len(data)

    def _flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, None, 0
        if batch and not self.transport.is_closing():
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() + self._batch_bytes
