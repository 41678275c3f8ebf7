"""Hosts of their own: Linux network namespaces joined by a bridge, made and removed per run.

Theory of operation. A :class:`NamespaceNetwork` is one run's private LAN:

- a *switch* namespace holding a bridge ``br0``;
- one namespace per host (``add_host("n0")``), joined to the switch by a veth
  pair: ``eth0`` inside the host with its own address on ``10.88.0.0/24``,
  and a port named after the host (``n0``) on the bridge, inside the switch.

Nothing is made in the root namespace: no interface, no route, no address.
So two runs (parallel, or one left behind by a killed pytest) cannot collide
on an interface name or an address; only the namespace names are global, and
they carry the run id ``kvraft-<pid>-<random>``. Deleting a run's namespaces
removes everything it made: a veth pair dies with either end, a bridge with
its namespace. :meth:`NamespaceNetwork.close` does that (idempotent, also at
garbage collection and interpreter exit), and :func:`sweep_stale` removes
what runs whose pytest process is gone left behind.

A fault is a cable pulled at the switch: :meth:`link_down` sets the host's
bridge port down, so the host's ``eth0`` loses its carrier and nothing
crosses in either direction until :meth:`link_up`; the processes and their
TCP connections stay, as when a real cable is pulled. A partition
(:meth:`partition`) moves groups of ports to bridges of their own, so hosts
on one side still reach each other, and :meth:`heal` moves them back. (This kernel has no
``netem``: delays and loss stay the userspace fault proxy's job.)

:class:`NamespaceLoop` is how the test process itself acts from inside a
namespace: an asyncio loop on a thread that entered the namespace with
``setns(2)``, which switches the network namespace of that thread only. Every
socket the loop opens lives in that namespace, so a client there reaches the
cluster across the bridge like any other host's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvraft.testing.processes import pid_alive

log = logging.getLogger(__name__)

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
SUBNET = ipaddress.ip_network("10.88.0.0/24")
# Node i gets .11+i, other hosts (clients) .100 up: a node's address says which it is.
NODE_HOST_BASE = 11
OTHER_HOST_BASE = 100
RUN_PREFIX = "kvraft-"
_RUN_NAME = re.compile(r"^kvraft-(\d+)-[0-9a-f]{6}-")
# Interface names are at most 15 bytes (IFNAMSIZ); a bridge port is named after its host.
MAX_HOST_NAME = 15
IP_TIMEOUT_S = 20.0
CLONE_NEWNET = 0x40000000


class NamespaceError(RuntimeError):
    """An ``ip`` command failed; says which, and what it printed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS...``; a NamespaceError naming the command and its stderr on failure."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NamespaceError(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise NamespaceError(f"ip {' '.join(args)}: exit {done.returncode}: {message}")
    return done


def list_namespaces() -> list[str]:
    """The named network namespaces (``ip netns list``), names only."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass(frozen=True)
class Host:
    """One host of the LAN: its namespace and its address there."""

    name: str
    netns: str
    address: str

    def endpoint(self, port: int) -> str:
        return f"{self.address}:{port}"


class NamespaceNetwork:
    """One run's LAN of namespaces; see the module docstring.

    Not thread-safe: the test's thread makes hosts and pulls cables.
    """

    def __init__(self) -> None:
        self.run_id = f"{RUN_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.switch = f"{self.run_id}-sw"
        self.hosts: dict[str, Host] = {}
        self._bridges: list[str] = []  # the partition's extra bridges, besides br0
        self._made: list[str] = []
        self._finalizer = weakref.finalize(self, _delete_namespaces, self._made)
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "name", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "dev", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "dev", "lo", "up")

    def add_host(self, name: str, address: str | None = None) -> Host:
        """A new host ``name`` on the bridge, at ``address`` (default: the next free one).

        ``n<i>`` names get ``10.88.0.(11+i)``; other names get .100 and up.
        """
        if not re.fullmatch(r"[a-z][a-z0-9]*", name) or len(name) > MAX_HOST_NAME:
            raise ValueError(f"host name {name!r}: lowercase letters and digits, at most 15")
        if name in self.hosts or name == "br0":
            raise ValueError(f"host {name!r} exists")
        address = address or self._next_address(name)
        if ipaddress.ip_address(address) not in SUBNET:
            raise ValueError(f"{address} is not in {SUBNET}")
        netns = f"{self.run_id}-{name}"
        self._add_namespace(netns)
        # The pair is made in the switch with its inner end moved to the host at once.
        ip("-n", self.switch, "link", "add", "name", name, "type", "veth", "peer", "name", "eth0",
           "netns", netns)  # fmt: skip
        ip("-n", self.switch, "link", "set", "dev", name, "master", "br0")
        ip("-n", self.switch, "link", "set", "dev", name, "up")
        ip("-n", netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "dev", "eth0", "up")
        host = Host(name, netns, address)
        self.hosts[name] = host
        log.info("%s: host %s at %s (netns %s)", self.run_id, name, address, netns)
        return host

    def _next_address(self, name: str) -> str:
        taken = {h.address for h in self.hosts.values()}
        node = re.fullmatch(r"n(\d+)", name)
        if node and int(node.group(1)) < OTHER_HOST_BASE - NODE_HOST_BASE:
            candidate = str(SUBNET.network_address + NODE_HOST_BASE + int(node.group(1)))
            if candidate not in taken:
                return candidate
        for offset in range(OTHER_HOST_BASE, SUBNET.num_addresses - 1):
            candidate = str(SUBNET.network_address + offset)
            if candidate not in taken:
                return candidate
        raise ValueError(f"no free address left in {SUBNET}")

    def link_down(self, name: str) -> None:
        """Pull host ``name``'s cable at the switch: nothing crosses until :meth:`link_up`."""
        ip("-n", self.switch, "link", "set", "dev", self._host(name).name, "down")
        log.info("%s: link of %s down", self.run_id, name)

    def link_up(self, name: str) -> None:
        ip("-n", self.switch, "link", "set", "dev", self._host(name).name, "up")
        log.info("%s: link of %s up", self.run_id, name)

    def partition(self, *groups: list[str]) -> None:
        """Split the LAN: the hosts of each group after the first move to a bridge of their own.

        ``partition(["n0", "client"], ["n1", "n2", "other"])``: traffic flows
        inside a group and never between groups. Hosts in no group stay with
        the first. Undone by :meth:`heal`.
        """
        self.heal()
        for k, group in enumerate(groups[1:], start=1):
            bridge = f"br{k}"
            ip("-n", self.switch, "link", "add", "name", bridge, "type", "bridge")
            ip("-n", self.switch, "link", "set", "dev", bridge, "up")
            self._bridges.append(bridge)
            for name in group:
                ip("-n", self.switch, "link", "set", "dev", self._host(name).name, "master", bridge)
        log.info("%s: partitioned %s", self.run_id, " | ".join(",".join(g) for g in groups))

    def heal(self) -> None:
        """Every host back on the one bridge (cables pulled stay pulled)."""
        if not self._bridges:
            return
        for host in self.hosts.values():
            ip("-n", self.switch, "link", "set", "dev", host.name, "master", "br0")
        for bridge in self._bridges:
            ip("-n", self.switch, "link", "delete", "dev", bridge)
        self._bridges.clear()
        log.info("%s: partition healed", self.run_id)

    def link_is_up(self, name: str) -> bool:
        """Whether the switch port of ``name`` is administratively up (its ``UP`` flag)."""
        out = ip("-n", self.switch, "-o", "link", "show", "dev", self._host(name).name).stdout
        flags = out.partition("<")[2].partition(">")[0].split(",")
        return "UP" in flags

    def _host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ValueError(f"no host {name!r} in {self.run_id}") from None

    def namespaces(self) -> list[str]:
        """This run's namespaces that exist now (for checks that close removed them)."""
        return [n for n in list_namespaces() if n.startswith(self.run_id + "-")]

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Delete every namespace of this run (and so every link); idempotent.

        Kill the processes inside first: a namespace outlives its name while
        a process still runs in it.
        """
        self._finalizer()

    def __enter__(self) -> NamespaceNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delete_namespaces(names: list[str]) -> None:
    """Delete ``names`` (hosts before the switch), going on past failures, then log them."""
    failures = []
    for name in reversed(names):
        done = ip("netns", "delete", name, check=False)
        if done.returncode != 0 and (NETNS_DIR / name).exists():
            failures.append(f"{name}: {done.stderr.strip()}")
    names.clear()
    if failures:
        log.error("cannot delete network namespaces: %s", "; ".join(failures))


def sweep_stale() -> list[str]:
    """Delete the namespaces of runs whose process is gone; the names deleted.

    A run killed hard (SIGKILL, a crash) cannot clean up after itself; the
    next run does. A run whose pid is alive is left alone: it may be a
    parallel one.
    """
    stale = [
        name
        for name in list_namespaces()
        if (m := _RUN_NAME.match(name)) and not pid_alive(int(m.group(1)))
    ]
    if stale:
        log.warning("deleting network namespaces of dead runs: %s", ", ".join(stale))
        _delete_namespaces(list(reversed(stale)))
    return stale


def probe() -> str | None:
    """None if this process can make namespaces, veth pairs and a bridge; else why not.

    Probes by doing it (a throw-away network with one host, a process run
    in it, a thread entering it): being root is not enough in a container
    without CAP_SYS_ADMIN or CAP_NET_ADMIN.
    """
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2; on Debian: apt-get install -y iproute2, as root)"
    if not NETNS_DIR.parent.is_dir():
        return f"no {NETNS_DIR.parent} to keep named namespaces in"
    try:
        sweep_stale()
        with NamespaceNetwork() as network:
            host = network.add_host("probe")
            # What the suite does with a namespace: run a process in it, enter it from a thread.
            ip("netns", "exec", host.netns, sys.executable, "-S", "-c", "pass")
            NamespaceLoop(host.netns).stop()
    except (NamespaceError, OSError) as exc:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}, not root"
        return f"cannot make network namespaces here ({who}): {exc}"
    return None


# ------------------------------------------------------- acting from inside


def enter_namespace(netns: str) -> None:
    """Move the calling *thread* into network namespace ``netns`` (setns(2), CLONE_NEWNET)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def current_namespace_inode(pid: int | str = "thread-self") -> int:
    """The inode of a process's (default: this thread's) network namespace."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def namespace_inode(netns: str) -> int:
    return os.stat(NETNS_DIR / netns).st_ino


class NamespaceLoop:
    """An asyncio loop on a daemon thread that lives in network namespace ``netns``.

    ``run(coro)`` from any other thread runs a coroutine there and waits for
    it; ``submit(coro)`` starts one and returns its future.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self._entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"in-{netns}", daemon=True)
        self._thread.start()
        self._entered.result(IP_TIMEOUT_S)  # raises what setns raised

    def _run(self) -> None:
        try:
            enter_namespace(self.netns)
        except BaseException as exc:
            self._entered.set_exception(exc)
            self.loop.close()
            return
        self._entered.set_result(None)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert threading.current_thread() is not self._thread, "would deadlock"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{coro!r} did not finish in {timeout_s}s in {self.netns}") from None

    def close_server(self, server: asyncio.Server) -> None:
        """Close ``server`` (started on this loop) on this loop and wait until it is closed.

        ``asyncio.Server`` is not thread-safe: a ``close()`` from the test's thread raced the
        loop detaching a connection that had just ended, both woke the server's waiters, and
        the second found none (``TypeError: 'NoneType' object is not iterable``).
        """

        async def close() -> None:
            server.close()
            await server.wait_closed()

        self.run(close())

    def stop(self) -> None:
        """Stop the loop and join its thread; idempotent."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
        if not self._thread.is_alive() and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.close()
