"""The namespace network itself: a pulled cable cuts, and nothing outlives its run."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from .network import (
    NamespaceLoop,
    NamespaceNetwork,
    current_namespace_inode,
    ip,
    list_namespaces,
    namespace_inode,
    sweep_stale,
)

pytestmark = pytest.mark.usefixtures("netns_available")


async def _echo_server(address: str, port: int) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, address, port)


async def _echo(address: str, port: int, timeout_s: float) -> bool:
    """Whether a line sent to ``address:port`` comes back within ``timeout_s``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(b"ping\n")
        return await asyncio.wait_for(reader.readline(), timeout_s) == b"ping\n"
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()


def test_hosts_reach_each_other_across_the_bridge_until_a_cable_is_pulled() -> None:
    """Two hosts talk over the bridge; with one's cable down nothing crosses, back up it does."""
    with NamespaceNetwork() as network:
        a, b = network.add_host("a"), network.add_host("b")
        in_a, in_b = NamespaceLoop(a.netns), NamespaceLoop(b.netns)
        try:
            server = in_a.run(_echo_server(a.address, 7001))
            assert in_b.run(_echo(a.address, 7001, 2.0))
            network.link_down("a")
            assert not network.link_is_up("a")
            assert not in_b.run(_echo(a.address, 7001, 0.5))
            # Seen from inside, the host still reaches its own address (the node can be asked).
            assert in_a.run(_echo(a.address, 7001, 2.0))
            network.link_up("a")
            assert network.link_is_up("a")
            assert in_b.run(_echo(a.address, 7001, 5.0))
            in_a.close_server(server)
        finally:
            in_a.stop()
            in_b.stop()


def test_a_loop_runs_inside_its_namespace_and_the_test_thread_stays_outside() -> None:
    """setns moves only the loop's thread: the test process's own thread is untouched."""
    outside = current_namespace_inode()
    with NamespaceNetwork() as network:
        host = network.add_host("a")
        loop = NamespaceLoop(host.netns)
        try:

            async def where() -> int:
                return current_namespace_inode()

            assert loop.run(where()) == namespace_inode(host.netns) != outside
            assert current_namespace_inode() == outside
        finally:
            loop.stop()


def test_close_removes_every_namespace_even_when_the_test_fails() -> None:
    """A with-block that raises still deletes the switch, the hosts and so their links."""
    network = NamespaceNetwork()
    with pytest.raises(RuntimeError, match="boom"), network:
        network.add_host("n0")
        network.add_host("client")
        assert len(network.namespaces()) == 3  # switch, n0, client
        raise RuntimeError("boom")
    assert network.namespaces() == []
    assert not any(n.startswith(network.run_id) for n in list_namespaces())
    network.close()  # idempotent


def test_two_runs_use_the_same_addresses_without_colliding() -> None:
    """Each run's LAN is its own: the same host names and addresses at once."""
    with NamespaceNetwork() as one, NamespaceNetwork() as two:
        assert one.run_id != two.run_id
        assert one.add_host("n0").address == two.add_host("n0").address


def test_sweep_deletes_what_dead_runs_left_and_spares_live_ones() -> None:
    """Namespaces named after a pid that is gone are removed; a live run's stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: the pid names no process now
    leftover = f"kvraft-{dead.pid}-abcdef-n0"
    ip("netns", "add", leftover)
    try:
        with NamespaceNetwork() as live:
            live.add_host("n0")
            swept = sweep_stale()
            assert leftover in swept
            assert leftover not in list_namespaces()
            assert len(live.namespaces()) == 2
    finally:
        ip("netns", "delete", leftover, check=False)


def test_a_partition_cuts_between_groups_only_and_heals() -> None:
    """partition([a], [b, c]): b and c still talk, a reaches neither; heal joins them again."""
    with NamespaceNetwork() as network:
        hosts = [network.add_host(name) for name in ("a", "b", "c")]
        loops = [NamespaceLoop(h.netns) for h in hosts]
        try:
            servers = [
                loop.run(_echo_server(h.address, 7001))
                for loop, h in zip(loops, hosts, strict=True)
            ]
            network.partition(["a"], ["b", "c"])
            assert loops[1].run(_echo(hosts[2].address, 7001, 2.0))
            assert not loops[0].run(_echo(hosts[1].address, 7001, 0.5))
            assert not loops[2].run(_echo(hosts[0].address, 7001, 0.5))
            network.heal()
            assert loops[0].run(_echo(hosts[1].address, 7001, 5.0))
            assert loops[2].run(_echo(hosts[0].address, 7001, 5.0))
            for loop, server in zip(loops, servers, strict=True):
                loop.close_server(server)
        finally:
            for loop in loops:
                loop.stop()
