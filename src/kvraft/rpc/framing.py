"""Frames: a 4-byte big-endian body length, then the body. Bytes in, frames out; no I/O.

The decoder is incremental (sans-I/O, like h11): feed it whatever the socket
gave, take out the complete frames. A length over ``max_frame_bytes`` raises
:class:`ProtocolError` before any of the body is buffered, so a hostile
length cannot make the reader allocate.
"""

from __future__ import annotations

import struct

from kvraft.errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024


def frame(body: bytes) -> bytes:
    """Return ``body`` with its length header."""
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body now complete, in order."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self.max_frame_bytes:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the maximum of {self.max_frame_bytes}"
                )
            end = pos + HEADER.size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[pos + HEADER.size : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
