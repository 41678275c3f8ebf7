"""Secured clusters of real ``kvraft server`` processes: peer secret, TLS, peer mTLS, tokens.

The first test runs the README's secured cluster (a secret, TLS on every port,
peer certificates, client tokens) and checks it serves, refuses what it must
(no token, a read token writing, plaintext, a stranger's CA), fails over on
TLS, and never logs a token, key or secret. The others take one mechanism
each: peer certificates alone authenticate peers (a node with a stranger's
certificate cannot join), and ``--client-cert-auth`` turns away clients
without a certificate. Certificates come from ``deploy/make-certs.sh``, the
script the README gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kvraft import (
    AsyncClient,
    Client,
    KVError,
    NoKey,
    Unauthorized,
    Unavailable,
    client_tls_context,
)
from kvraft.client.admin import fetch_statuses
from kvraft.testing import processes
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from tests.docs.test_examples import BLOCKS, failure, run_block, run_elsewhere
from tests.support.certs import CertSet

T = TypeVar("T")

SECRET = "a-secret-for-the-secured-cluster-test-0123456789"
TOKENS = {
    "admin": "admin-token-for-the-test-0123456789",
    "readwrite": "writer-token-for-the-test-0123456789",
    "read": "reader-token-for-the-test-0123456789",
}
# The README's secured-cluster example uses these; its block runs here.
README_TOKENS = {"ops-9c1f4e0b7d2a46f3a1e8": "admin", "app-5b7e2d91c04f48a6b3d2": "readwrite"}
START_TIMEOUT_S = 30.0


@dataclass
class SecuredCluster:
    """Three real servers with the security flags chosen per test; killed at teardown."""

    root: Path
    certs: CertSet
    secret: bool = True
    peer_tls: bool = True
    tokens: bool = True
    client_cert_auth: bool = False
    # Node id -> the cert set its peer certificate comes from (default: certs).
    peer_certs: dict[int, CertSet] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = [processes.reserve_port() for _ in range(3)]
        (self.root / "peer-secret").write_text(SECRET + "\n")
        (self.root / "peer-secret").chmod(0o600)
        lines = [f"{token} {role}" for role, token in TOKENS.items()]
        lines += [f"{token} {role}" for token, role in README_TOKENS.items()]
        (self.root / "tokens").write_text("# token role\n" + "\n".join(lines) + "\n")

    @property
    def servers(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def command(self, i: int) -> list[str]:
        peers = ",".join(f"{j}={a}" for j, a in enumerate(self.servers))
        c = self.certs
        cmd = [sys.executable, "-m", "kvraft", "server", "--id", str(i)]
        cmd += ["--listen", self.servers[i], "--peers", peers]
        cmd += ["--data-dir", str(self.root / f"n{i}")]
        cmd += ["--cert-file", str(c.node_cert(i)), "--key-file", str(c.node_key(i))]
        if self.secret:
            cmd += ["--peer-secret-file", str(self.root / "peer-secret")]
        if self.peer_tls:
            p = self.peer_certs.get(i, c)
            cmd += ["--peer-cert-file", str(p.node_cert(i)), "--peer-key-file", str(p.node_key(i))]
            cmd += ["--peer-trusted-ca-file", str(p.ca)]
        if self.client_cert_auth:
            cmd += ["--trusted-ca-file", str(c.client_ca), "--client-cert-auth"]
        if self.tokens:
            cmd += ["--auth-token-file", str(self.root / "tokens")]
        return cmd

    def log(self, i: int) -> Path:
        return self.root / f"n{i}.log"

    def start(self, i: int) -> None:
        self.procs[i] = processes.spawn(self.command(i), self.log(i))

    def start_all(self) -> None:
        for i in range(3):
            self.start(i)

    def kill(self, i: int) -> None:
        processes.kill(self.procs.pop(i))

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i)
        processes.release_ports(self.ports)

    def client_ssl(self) -> ssl.SSLContext:
        if self.client_cert_auth:
            c = self.certs
            return client_tls_context(cacert=c.ca, cert=c.client_cert, key=c.client_key)
        return client_tls_context(cacert=self.certs.ca)

    def client(self, role: str = "readwrite", **kwargs: Any) -> Client:
        kwargs.setdefault("deadline", 10.0)
        kwargs.setdefault("ssl", self.client_ssl())
        return Client(self.servers, token=TOKENS[role] if self.tokens else None, **kwargs)

    def statuses(self, nodes: list[int] | None = None) -> list[dict[str, Any]]:
        servers = [self.servers[i] for i in (nodes if nodes is not None else range(3))]
        token = TOKENS["admin"] if self.tokens else None
        return fetch_statuses(servers, 1.0, token=token, ssl=self.client_ssl())

    def leader(self, nodes: list[int] | None = None) -> int | None:
        """The id of the one node that says it leads, of ``nodes`` (all by default)."""
        leaders = [r["id"] for r in self.statuses(nodes) if r.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = START_TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def secured(tmp_path: Path, certs: CertSet) -> Iterator[Callable[..., SecuredCluster]]:
    made: list[SecuredCluster] = []

    def make(**kwargs: Any) -> SecuredCluster:
        cluster = SecuredCluster(tmp_path / f"c{len(made)}", certs, **kwargs)
        made.append(cluster)
        return cluster

    for d in range(4):
        (tmp_path / f"c{d}").mkdir()
    yield make
    for cluster in made:
        cluster.close()


def test_secured_cluster_serves_refuses_and_fails_over(
    secured: Callable[..., SecuredCluster], certs: CertSet, stranger_certs: CertSet
) -> None:
    cluster = secured()
    cluster.start_all()
    leader = wait_for("a leader", cluster.leader)

    with cluster.client("readwrite") as writer:
        assert writer.put("k", "v1", 0) == 1
    with cluster.client("read") as reader:
        assert reader.get("k") == ("v1", 1)
        with pytest.raises(Unauthorized, match="put needs the readwrite role"):
            reader.put("k", "v2", 1)
    tls = cluster.client_ssl()
    with (
        Client(cluster.servers, deadline=5.0, ssl=tls) as anonymous,
        pytest.raises(Unauthorized, match="requires a token"),
    ):
        anonymous.get("k")
    with (
        Client(cluster.servers, deadline=5.0, ssl=tls, token="x" * 40) as forger,
        pytest.raises(Unauthorized, match="refused this client's token"),
    ):
        forger.get("k")
    # A generous timeout: a TLS handshake on a loaded 2-core machine can take over 1 s.
    rows = fetch_statuses(cluster.servers, 10.0, token=TOKENS["read"], ssl=cluster.client_ssl())
    assert all(r.get("refused") and "needs the admin role" in str(r["error"]) for r in rows)

    # Plaintext, and TLS trusting another CA: no answer, and the reason says why.
    with (
        Client(cluster.servers, deadline=2.0, token=TOKENS["read"]) as plaintext,
        pytest.raises(Unavailable, match="TLS server"),
    ):
        plaintext.get("k")
    stranger_ssl = client_tls_context(cacert=stranger_certs.ca)
    with (
        Client(cluster.servers, deadline=2.0, token=TOKENS["read"], ssl=stranger_ssl) as lost,
        pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        lost.get("k")

    # The command line speaks TLS and tokens too (flags, or $KVRAFT_CACERT/$KVRAFT_TOKEN).
    env = dict(os.environ, KVRAFT_SERVERS=",".join(cluster.servers))
    env.update(KVRAFT_CACERT=str(certs.ca), KVRAFT_TOKEN=TOKENS["read"])
    cli = subprocess.run(
        [sys.executable, "-m", "kvraft", "get", "k", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert '"value": "v1"' in cli.stdout

    # Failover over TLS under load: kill the leader while three clients read and
    # write two keys; the other two elect a leader, and what the clients saw is
    # linearizable.
    history = History()
    stop = threading.Event()

    def one_round(c: Client, key: str, value: str) -> None:
        """Read ``key`` and write ``value`` at the version seen (or create the key)."""
        with contextlib.suppress(NoKey):
            _, version = history.record_get(c.client_id, key, lambda: c.get(key))
            with contextlib.suppress(KVError):
                history.record_put(
                    c.client_id, key, value, version, lambda: c.put(key, value, version)
                )
            return
        with contextlib.suppress(KVError):
            history.record_put(c.client_id, key, value, 0, lambda: c.put(key, value, 0))

    def worker(n: int) -> None:
        with cluster.client("readwrite", call_timeout_s=0.5) as c:
            while not stop.is_set():
                with contextlib.suppress(KVError):
                    one_round(c, f"shared-{n % 2}", f"{n}-{time.monotonic_ns()}")

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in workers:
        t.start()
    try:
        wait_for("writes before the kill", lambda: True if len(history) > 20 else None)
        cluster.kill(leader)
        survivors = [i for i in range(3) if i != leader]
        wait_for("a new leader", lambda: cluster.leader(survivors))
        count = len(history)
        wait_for("writes after the kill", lambda: True if len(history) > count + 20 else None)
    finally:
        stop.set()
        for t in workers:
            t.join(30)
    assert_linearizable(history, 30.0)
    with cluster.client("readwrite") as writer:
        assert writer.put("k", "v2", 1) == 2
    cluster.start(leader)  # it rejoins through the authenticated, encrypted peer channel

    def caught_up() -> bool | None:
        rows = cluster.statuses([leader])
        return True if rows[0].get("applied_index", 0) >= 3 else None

    wait_for("the restarted node to catch up", caught_up)

    logs = "".join(cluster.log(i).read_text() for i in range(3))
    assert "refused a token" in logs
    for secret in (*TOKENS.values(), "x" * 40, SECRET, "PRIVATE KEY", "BEGIN CERTIFICATE"):
        assert secret not in logs


def test_peer_certificates_alone_authenticate_peers(
    secured: Callable[..., SecuredCluster], stranger_certs: CertSet
) -> None:
    """No secret: the peer CA's certificates prove membership, and a stranger's do not."""
    cluster = secured(secret=False, tokens=False, peer_certs={2: stranger_certs})
    cluster.start_all()
    leader = wait_for("a leader of nodes 0 and 1", lambda: cluster.leader([0, 1]))
    assert leader in (0, 1)
    with cluster.client() as client:
        assert client.put("mtls", "yes", 0) == 1
    wait_for(
        "node 2 to fail its peer handshakes",
        lambda: True if "certificate" in cluster.log(2).read_text() else None,
    )
    # Node 2 presents a certificate the others' peer CA did not issue: it never
    # hears from the leader, so it has no leader and applied nothing.
    row = cluster.statuses([2])[0]
    assert row.get("leader") is None and row.get("applied_index", 0) == 0, row


def test_client_cert_auth_turns_away_clients_without_a_certificate(
    secured: Callable[..., SecuredCluster], certs: CertSet
) -> None:
    cluster = secured(tokens=False, client_cert_auth=True)
    cluster.start_all()
    wait_for("a leader", cluster.leader)
    with cluster.client() as client:
        assert client.put("cert", "ok", 0) == 1
    no_cert = client_tls_context(cacert=certs.ca)
    with Client(cluster.servers, deadline=2.0, ssl=no_cert) as client, pytest.raises(Unavailable):
        client.get("cert")

    async def with_cert() -> tuple[str, int]:
        async with AsyncClient(cluster.servers, deadline=10.0, ssl=cluster.client_ssl()) as c:
            return await c.get("cert")

    assert asyncio.run(with_cert()) == ("ok", 1)


def test_the_readme_secured_example_runs(
    secured: Callable[..., SecuredCluster], certs: CertSet, tmp_path: Path
) -> None:
    """The README's Python example for a secured cluster, as written, against one."""
    blocks = [b for b in BLOCKS if b.path == "README.md" and run_elsewhere(b)]
    assert blocks, "the README has no example marked as run by this test"
    cluster = secured()
    cluster.start_all()
    wait_for("a leader", cluster.leader)
    workdir = tmp_path / "example"
    workdir.mkdir()
    (workdir / "certs").symlink_to(certs.dir)  # the example's relative paths
    for block in blocks:
        result = run_block(block, cluster.servers, workdir)
        why = failure(result)
        assert why is None, f"{block.id} failed ({why}):\n{result.stdout}{result.stderr}"
