"""``split_address``: the one parser of ``host:port`` for flags, peer lists and clients."""

from __future__ import annotations

import pytest

from kvraft.addresses import split_address


def test_split_address_accepts_host_port() -> None:
    assert split_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert split_address("node-a.local:65535") == ("node-a.local", 65535)
    assert split_address("h:1") == ("h", 1)


def test_split_address_unwraps_a_bracketed_ipv6_literal() -> None:
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("[fe80::1:2]:7001") == ("fe80::1:2", 7001)


@pytest.mark.parametrize(
    "bad",
    ["", "7001", "host:", ":80", "[]:80", "host:0", "host:65536", "host:8o", "host:\u0663", "h:-1"],
)
def test_split_address_refuses_what_is_not_host_port(bad: str) -> None:
    """Ports outside 1..65535, non-ASCII digits and empty hosts are refused at once."""
    with pytest.raises(ValueError, match="not a host:port address"):
        split_address(bad)
