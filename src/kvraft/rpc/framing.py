"""Frames: a 4-byte big-endian body length, then the body. Bytes in, frames out; no I/O.

The decoder is incremental (sans-I/O, like h11): feed it whatever the socket
gave, take out the complete frames. A length over ``max_frame_bytes`` is
noticed as soon as its 4-byte header is in, before any of the body is
buffered, so a hostile length cannot make the reader allocate. By default that
raises :class:`ProtocolError`; a decoder built with ``on_oversize`` instead
hands the frame's first :data:`OVERSIZE_HEAD_BYTES` to that callback and
discards the rest as it streams past (a client uses this to fail just the one
call whose reply is too large, keeping the connection).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from kvraft.errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
# How much of an oversize frame's body ``on_oversize`` sees: enough for the
# envelope's array header, kind and request id (at most 11 bytes of msgpack).
OVERSIZE_HEAD_BYTES = 16


def frame(body: bytes) -> bytes:
    """Return ``body`` with its length header."""
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    ``on_oversize(length, head)``, if given, is called once per frame whose
    length exceeds ``max_frame_bytes``, with the first
    ``min(length, OVERSIZE_HEAD_BYTES)`` bytes of its body; the frame is then
    skipped. It may raise :class:`ProtocolError` to give up on the stream.
    """

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        on_oversize: Callable[[int, bytes], None] | None = None,
    ) -> None:
        if max_frame_bytes < 0:
            raise ValueError(f"max_frame_bytes must be >= 0, not {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self._on_oversize = on_oversize
        # Invariant: _buf never holds a complete frame, and never more than
        # max_frame_bytes + HEADER.size bytes.
        self._buf = bytearray()
        # State of the oversize frame being skipped, if any (_skip_left > 0).
        self._skip_left = 0
        self._skip_length = 0
        self._skip_head = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body now complete, in order."""
        out: list[bytes] = []
        if self._skip_left:
            data = self._skip(data)
            if self._skip_left:
                return out
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # common case: no partial frame pending, parse in place
        pos = 0
        size = len(buf)
        max_frame_bytes = self.max_frame_bytes
        while size - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > max_frame_bytes:
                if self._on_oversize is None:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the maximum of {max_frame_bytes}"
                    )
                self._skip_left, self._skip_length = length, length
                self._skip_head = bytearray()
                rest = self._skip(bytes(buf[pos + HEADER.size :]))
                self._buf = bytearray()
                if self._skip_left:
                    return out
                buf, pos, size = rest, 0, len(rest)
                continue
            end = pos + HEADER.size + length
            if end > size:
                break
            out.append(bytes(buf[pos + HEADER.size : end]))
            pos = end
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < size:
            self._buf = bytearray(buf[pos:])
        return out

    def _skip(self, data: bytes) -> bytes:
        """Discard ``data`` that belongs to the oversize frame; return what follows it."""
        n = min(len(data), self._skip_left)
        want = min(self._skip_length, OVERSIZE_HEAD_BYTES)
        had = len(self._skip_head)
        if had < want:
            self._skip_head += data[: min(n, want - had)]
            if len(self._skip_head) == want:
                assert self._on_oversize is not None
                self._on_oversize(self._skip_length, bytes(self._skip_head))
        self._skip_left -= n
        return data[n:]

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame (skipped bytes excluded)."""
        return len(self._buf)
