"""A stand-in kvraft server: the product's command line, a few trivial RPCs.

The cluster harness (``kvraft.testing``) is tested against this process until
the real server exists, and stays useful afterwards because it answers at once
and its behaviour is obvious. It accepts the product's command line
(``[--log-level L] server --id I --listen H:P --peers 0=H:P,... --data-dir D
--cluster-id C [--peer-secret-file F | --insecure-peers] [--test-hooks] ...``;
unknown flags are ignored) and serves:

- ``echo(x) -> x``;
- ``incr(delta=1) -> counter``: a counter kept in ``DATA_DIR/counter``, so a
  restart shows whether state persisted (``incr(0)`` reads it);
- ``heard() -> {sender: count}``: notifies received, by sender;
- ``ping_peers(count=1) -> [peer ids written to]``: a ``hello`` notify to every
  other peer through the addresses in ``--peers`` (the proxies);
- ``slow(seconds) -> seconds``: answers after sleeping;
- ``info() -> {...}``: its id, pid, cluster id, data dir and the extra flags.

Its peers authenticate as a real node's do (``--peer-secret-file``: the
peer handshake of ``kvraft.rpc.peer_auth``, both ways), so the harness's
secret is tested to reach every process it starts; with neither flag the
stand-in refuses peers, as the server would.

SIGTERM and SIGINT stop it cleanly with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from kvraft.addresses import split_address
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import peer_sender
from kvraft.rpc.event_loop import install_event_loop_policy
from kvraft.rpc.peer_auth import Membership, PeerKey, check_secret
from kvraft.rpc.server import RpcServer
from kvraft.rpc.wire_errors import UnknownMethod

log = logging.getLogger("standin")

NOTIFY_CONNECT_TIMEOUT_S = 2.0


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The product's ``server`` command line; unknown flags are returned, not refused."""
    parser = argparse.ArgumentParser(prog="standin")
    parser.add_argument("--log-level", dest="global_log_level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server")
    server.add_argument("--id", type=int, required=True)
    server.add_argument("--listen", required=True)
    server.add_argument("--peers", required=True)
    server.add_argument("--data-dir", type=Path, required=True)
    server.add_argument("--cluster-id", default="kvraft")
    server.add_argument("--test-hooks", action="store_true")
    server.add_argument("--peer-secret-file", type=Path, default=None)
    server.add_argument("--insecure-peers", action="store_true")
    server.add_argument("--log-level", dest="log_level", default=None)
    args, extra = parser.parse_known_args(argv)
    return args, extra


def peer_key(args: argparse.Namespace) -> PeerKey | None:
    """The cluster's key from ``--peer-secret-file``, or None."""
    if args.peer_secret_file is None:
        return None
    return PeerKey(check_secret(args.peer_secret_file.read_bytes()), args.cluster_id)


def parse_peers(text: str) -> dict[int, str]:
    peers: dict[int, str] = {}
    for part in filter(None, text.split(",")):
        ident, _, address = part.partition("=")
        split_address(address)
        peers[int(ident)] = address
    return peers


class StandIn:
    """The RPC handler (see the module docstring for the methods)."""

    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.id: int = args.id
        self.args = args
        self.extra = extra
        self.peers = parse_peers(args.peers)
        self.data_dir: Path = args.data_dir
        self.counter_path = self.data_dir / "counter"
        self.counter = int(self.counter_path.read_text()) if self.counter_path.exists() else 0
        self.heard: Counter[str] = Counter()
        me = peer_sender(self.id)
        self.key = peer_key(args)
        self.clients = {
            i: RpcClient(
                a, me, peer_key=self.key, server_peer_id=i if self.key is not None else None
            )
            for i, a in self.peers.items()
            if i != self.id
        }

    def membership(self) -> Membership | None:
        if self.key is None:
            return None
        return Membership(self.key, self.id, frozenset(self.peers) - {self.id})

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        if method == "echo":
            return args
        if method == "incr":
            return self.incr(1 if args is None else int(args))
        if method == "heard":
            return dict(self.heard)
        if method == "ping_peers":
            return await self.ping_peers(1 if args is None else int(args))
        if method == "slow":
            await asyncio.sleep(float(args))
            return args
        if method == "info":
            return {
                "id": self.id,
                "pid": os.getpid(),
                "cluster_id": self.args.cluster_id,
                "data_dir": str(self.data_dir),
                "peers": {str(i): a for i, a in self.peers.items()},
                "test_hooks": self.args.test_hooks,
                "extra": self.extra,
            }
        raise UnknownMethod(f"stand-in has no method {method!r}")

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        self.heard[sender] += 1

    def incr(self, delta: int) -> int:
        """Add ``delta`` and persist it before answering.

        Written to a temporary file and renamed over the old one, so a SIGKILL
        leaves the old or the new value, never half of one. No fsync: a
        process crash does not lose the page cache, and the tests crash
        processes, not machines.
        """
        if delta:
            self.counter += delta
            tmp = self.counter_path.with_suffix(".tmp")
            tmp.write_text(str(self.counter))
            os.replace(tmp, self.counter_path)
        return self.counter

    async def ping_peers(self, count: int) -> list[int]:
        """Send ``count`` ``hello`` notifies to each other peer; the ids written to.

        ``RpcClient.notify`` drops messages while it connects, so wait (within
        a deadline) for each connection before sending.
        """
        loop = asyncio.get_running_loop()
        written: list[int] = []
        for peer, client in sorted(self.clients.items()):
            deadline = loop.time() + NOTIFY_CONNECT_TIMEOUT_S
            sent = 0
            while sent < count and loop.time() < deadline:
                if client.notify("hello", sent):
                    sent += 1
                else:
                    await asyncio.sleep(0.005)
            if sent:
                written.append(peer)
        return written

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


async def serve(args: argparse.Namespace, extra: list[str]) -> None:
    handler = StandIn(args, extra)
    server = RpcServer(
        handler,
        name=f"n{args.id}",
        peer_auth=handler.membership(),
        insecure_peers=args.insecure_peers and handler.key is None,
    )
    host, port = split_address(args.listen)
    # Handlers before listening: the harness may send SIGTERM as soon as the port opens.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start(host, port)
    log.info("n%d serving on %s (cluster %s)", args.id, server.address, args.cluster_id)
    await stop.wait()
    log.info("n%d stopping", args.id)
    handler.close()
    await server.close()
    log.info("n%d stopped", args.id)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    level = (args.log_level or args.global_log_level).upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if extra:
        log.info("n%d ignoring unknown arguments %s", args.id, extra)
    loop_name = install_event_loop_policy()
    log.debug("n%d event loop: %s", args.id, loop_name)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
