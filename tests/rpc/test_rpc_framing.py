"""FrameDecoder: the byte stream -> frame bodies, whatever the chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.errors import ProtocolError
from kvraft.rpc.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    OVERSIZE_HEAD_BYTES,
    FrameDecoder,
    frame,
)

BODIES = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"\x00\x00\x00\x05"]
STREAM = b"".join(frame(b) for b in BODIES)


def test_frame_prefixes_big_endian_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"


def test_frames_survive_a_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        out = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:])
        assert out == BODIES, f"split at {cut}"
        assert decoder.buffered == 0


def test_frames_survive_being_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
    assert out == BODIES
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk_come_out_in_order() -> None:
    bodies = [str(i).encode() * (i % 7) for i in range(1000)]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(frame(b) for b in bodies)) == bodies


def test_partial_frame_is_kept_until_complete() -> None:
    decoder = FrameDecoder()
    data = frame(b"x" * 100)
    assert decoder.feed(data[:50]) == []
    assert decoder.buffered == 50
    assert decoder.feed(data[50:] + data[:3]) == [b"x" * 100]
    assert decoder.buffered == 3


@given(
    bodies=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_any_chunking_yields_the_same_frames(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(b) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(stream[a:b])
    assert out == bodies


def test_default_maximum_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 16 * 1024 * 1024
    assert FrameDecoder().max_frame_bytes == DEFAULT_MAX_FRAME_BYTES


def test_frame_of_exactly_the_maximum_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(frame(b"0123456789")) == [b"0123456789"]


def test_oversize_length_raises_before_the_body_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    with pytest.raises(ProtocolError, match="1001 bytes exceeds the maximum of 1000"):
        decoder.feed(HEADER.pack(1001))  # the header alone: no body sent at all
    hostile = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        hostile.feed(HEADER.pack(0xFFFFFFFF) + b"x" * 10)
    assert hostile.buffered <= HEADER.size + 10


def test_oversize_frame_after_good_ones_raises() -> None:
    decoder = FrameDecoder(max_frame_bytes=5)
    assert decoder.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(ProtocolError):
        decoder.feed(frame(b"toolong"))


def test_negative_maximum_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=-1)


def _skipping(max_frame_bytes: int) -> tuple[FrameDecoder, list[tuple[int, bytes]]]:
    seen: list[tuple[int, bytes]] = []
    decoder = FrameDecoder(max_frame_bytes, on_oversize=lambda n, head: seen.append((n, head)))
    return decoder, seen


def test_skipping_decoder_reports_the_head_and_skips_the_oversize_frame() -> None:
    big = bytes(range(200))
    stream = frame(b"before") + frame(big) + frame(b"after")
    for cut in range(len(stream) + 1):
        decoder, seen = _skipping(50)
        out = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert out == [b"before", b"after"], f"split at {cut}"
        assert seen == [(200, big[:OVERSIZE_HEAD_BYTES])], f"split at {cut}"
        assert decoder.buffered == 0


def test_skipping_decoder_never_buffers_the_oversize_body() -> None:
    decoder, seen = _skipping(100)
    assert decoder.feed(HEADER.pack(10_000_000)) == []
    for _ in range(100):
        assert decoder.feed(b"y" * 10_000) == []
        assert decoder.buffered == 0
    assert seen == [(10_000_000, b"y" * OVERSIZE_HEAD_BYTES)]


def test_skipping_decoder_reports_a_short_oversize_frame_whole() -> None:
    decoder, seen = _skipping(3)
    assert decoder.feed(frame(b"abcd") + frame(b"ab")) == [b"ab"]
    assert seen == [(4, b"abcd")]
