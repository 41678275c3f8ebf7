"""``host:port`` addresses, parsed in one place: pure, no sockets and no name lookups.

Every address a user or a peer list gives (``--listen``, ``--peers``,
``--servers``, a client's server list, a proxy's upstream) goes through
:func:`split_address`, so they are all refused the same way and at the moment
they are given, not on the first connection. Whether the host resolves is
found out when connecting: resolving here would need the network.
"""

from __future__ import annotations


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``; ValueError if not one.

    The port must be ASCII digits in 1..65535 (port 0 means "any free port" to
    a listener, never an address to give others); the host must not be empty.
    The last colon splits, so a bracketed IPv6 literal keeps its own colons.
    """
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"not a host:port address: {address!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)
