"""TLS setup, no sockets: the flag combinations, loading the files, and telling a peer's
certificate from a client's.

Handshakes here run in memory (:class:`ssl.MemoryBIO`) between the contexts
the product builds, with the certificates ``deploy/make-certs.sh`` makes.
"""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import CertSet

from kvraft.rpc.tls import (
    MIN_TLS_VERSION,
    PEER_SERVER_NAME,
    ServerTls,
    TlsFiles,
    client_tls_context,
    load_server_tls,
    peer_dial_context,
)

A, B, C, D = (Path(f"/nonexistent/{name}.pem") for name in "abcd")


@pytest.mark.parametrize(
    ("files", "flags"),
    [
        (TlsFiles(key_file=A), ["--cert-file", "--key-file"]),
        (TlsFiles(cert_file=A), ["--cert-file", "--key-file"]),
        (
            TlsFiles(cert_file=A, key_file=B, peer_cert_file=C),
            ["--peer-cert-file", "--peer-key-file"],
        ),
        (
            TlsFiles(cert_file=A, key_file=B, peer_key_file=C),
            ["--peer-cert-file", "--peer-key-file"],
        ),
        (
            TlsFiles(cert_file=A, key_file=B, client_cert_auth=True),
            ["--client-cert-auth", "--trusted-ca-file"],
        ),
        (
            TlsFiles(cert_file=A, key_file=B, trusted_ca_file=C, client_cert_auth=True),
            ["--client-cert-auth", "--peer-"],
        ),
        (TlsFiles(trusted_ca_file=C), ["--trusted-ca-file", "--cert-file"]),
        (
            TlsFiles(peer_cert_file=A, peer_key_file=B, peer_trusted_ca_file=C),
            ["--peer-cert-file", "--cert-file"],
        ),
        (
            TlsFiles(cert_file=A, key_file=B, peer_cert_file=C, peer_key_file=D),
            ["--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file"],
        ),
        (
            TlsFiles(cert_file=A, key_file=B, peer_trusted_ca_file=C),
            ["--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file"],
        ),
        (TlsFiles(peer_trusted_ca_file=C), ["--peer-trusted-ca-file"]),
    ],
    ids=[
        "key-without-cert",
        "cert-without-key",
        "peer-cert-without-key",
        "peer-key-without-cert",
        "client-cert-auth-without-ca",
        "client-cert-auth-without-peer-tls",
        "trusted-ca-without-cert",
        "peer-tls-without-cert",
        "peer-cert-without-peer-ca",
        "peer-ca-without-peer-cert",
        "peer-ca-alone",
    ],
)
def test_check_refuses_a_combination_that_cannot_work(files: TlsFiles, flags: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        files.check()
    for flag in flags:
        assert flag in str(info.value)
    # load_server_tls and peer_dial_context check first, before touching any file.
    with pytest.raises(ValueError, match="--"):
        load_server_tls(files, has_peer_secret=True)
    with pytest.raises(ValueError, match="--"):
        peer_dial_context(files)


@pytest.mark.parametrize(
    "files",
    [
        TlsFiles(),
        TlsFiles(cert_file=A, key_file=B),
        TlsFiles(cert_file=A, key_file=B, trusted_ca_file=C),
        TlsFiles(
            cert_file=A, key_file=B, peer_cert_file=C, peer_key_file=D, peer_trusted_ca_file=A
        ),
        TlsFiles(A, B, C, True, C, D, A),
    ],
    ids=["none", "port", "port-and-client-ca", "peer-tls", "everything"],
)
def test_check_accepts_the_combinations_that_work(files: TlsFiles) -> None:
    files.check()
    assert files.enabled == (files.cert_file is not None)


def test_without_a_cert_file_there_is_no_tls() -> None:
    assert load_server_tls(TlsFiles(), has_peer_secret=False) is None
    assert peer_dial_context(TlsFiles()) is None
    assert not TlsFiles().enabled and not TlsFiles().peer_tls


def full(certs: CertSet, i: int = 0) -> TlsFiles:
    """Every flag, as a node of ``certs`` gives them."""
    return TlsFiles(
        cert_file=certs.node_cert(i),
        key_file=certs.node_key(i),
        trusted_ca_file=certs.client_ca,
        client_cert_auth=True,
        peer_cert_file=certs.node_cert(i),
        peer_key_file=certs.node_key(i),
        peer_trusted_ca_file=certs.ca,
    )


def changes(field: str, path: Path) -> dict[str, Any]:
    return {field: path}


FILE_FLAGS = {
    "cert_file": "--cert-file",
    "key_file": "--key-file",
    "trusted_ca_file": "--trusted-ca-file",
    "peer_trusted_ca_file": "--peer-trusted-ca-file",
}


@pytest.mark.parametrize("field", list(FILE_FLAGS))
def test_a_missing_file_is_named_with_its_flag(field: str, certs: CertSet, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError) as info:
        load_server_tls(replace(full(certs), **changes(field, missing)), has_peer_secret=False)
    message = str(info.value)
    assert "no such file" in message
    assert str(missing) in message, message
    # The key is loaded with its certificate, under either name.
    flags = ("--cert-file", "--key-file") if field == "key_file" else (FILE_FLAGS[field],)
    assert any(message.startswith(flag) for flag in flags), message


@pytest.mark.parametrize("field", list(FILE_FLAGS))
def test_a_file_that_is_not_pem_is_named_with_its_flag(
    field: str, certs: CertSet, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not PEM\n")
    with pytest.raises(ValueError) as info:
        load_server_tls(replace(full(certs), **changes(field, junk)), has_peer_secret=False)
    message = str(info.value)
    assert str(junk) in message
    flags = ("--cert-file", "--key-file") if field == "key_file" else (FILE_FLAGS[field],)
    assert any(message.startswith(flag) for flag in flags), message
    assert "this is not PEM" not in message


@pytest.mark.parametrize("flag", ["--trusted-ca-file", "--peer-trusted-ca-file"])
@pytest.mark.parametrize("content", ["empty", "key", "leaf"])
def test_a_ca_file_without_a_ca_certificate_is_refused(
    flag: str, content: str, certs: CertSet, tmp_path: Path
) -> None:
    """No certificate at all (empty, a key), or only a node's certificate (not a CA)."""
    path = {"key": certs.node_key(1), "leaf": certs.node_cert(1)}.get(content, tmp_path / "e.pem")
    if content == "empty":
        path.write_text("")
    field = flag[2:].replace("-", "_")
    with pytest.raises(ValueError) as info:
        load_server_tls(replace(full(certs), **changes(field, path)), has_peer_secret=False)
    message = str(info.value)
    assert message.startswith(f"{flag}: ") and str(path) in message, message
    assert "PRIVATE KEY" not in message
    if content == "leaf":
        assert "holds no CA certificate" in message


def test_the_verify_mode_follows_the_flags(certs: CertSet) -> None:
    files = full(certs)
    tls = load_server_tls(files, has_peer_secret=False)
    assert tls is not None and tls.context.verify_mode is ssl.CERT_REQUIRED
    assert tls.context.minimum_version is MIN_TLS_VERSION
    tls = load_server_tls(replace(files, client_cert_auth=False), has_peer_secret=False)
    assert tls is not None and tls.context.verify_mode is ssl.CERT_OPTIONAL
    port_only = TlsFiles(cert_file=certs.node_cert(0), key_file=certs.node_key(0))
    tls = load_server_tls(port_only, has_peer_secret=False)
    assert tls is not None and tls.context.verify_mode is ssl.CERT_NONE
    assert not tls.peer_ca_subjects


# ------------------------------------------------------------ in-memory handshakes


def handshake(server: ServerTls, client: ssl.SSLContext, name: str | None) -> ssl.SSLObject:
    """A TLS handshake between the two in memory; the server's end (SSLError if it fails)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(c_in, c_out, server_hostname=name)
    server_end = server.context.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, end in enumerate((client_end, server_end)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done):
            return server_end
    raise AssertionError("the in-memory handshake did not finish")


def peer_tls_of(certs: CertSet, *, client_ca: bool = True) -> ServerTls:
    files = replace(full(certs), client_cert_auth=False)
    if not client_ca:
        files = replace(files, trusted_ca_file=None)
    tls = load_server_tls(files, has_peer_secret=False)
    assert tls is not None
    return tls


def node_dialer(certs: CertSet, i: int) -> ssl.SSLContext:
    dial = peer_dial_context(full(certs, i))
    assert dial is not None
    context, name = dial
    assert name == PEER_SERVER_NAME and not context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    return context


def test_a_node_certificate_makes_a_tls_peer(certs: CertSet) -> None:
    tls = peer_tls_of(certs)
    assert tls.is_peer(handshake(tls, node_dialer(certs, 1), PEER_SERVER_NAME))


def test_a_client_certificate_or_none_is_not_a_peer(certs: CertSet) -> None:
    tls = peer_tls_of(certs)
    with_cert = client_tls_context(certs.ca, certs.client_cert, certs.client_key)
    assert not tls.is_peer(handshake(tls, with_cert, "127.0.0.1"))
    assert not tls.is_peer(handshake(tls, client_tls_context(certs.ca), "localhost"))
    assert not tls.is_peer(None)


def test_a_strangers_node_certificate_does_not_verify(
    certs: CertSet, stranger_certs: CertSet
) -> None:
    """The stranger's CA has the cluster CA's very name: only the signature tells them apart."""
    tls = peer_tls_of(certs)
    # It trusts the cluster's CA (so the failure is the server's check of its certificate).
    forger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    forger.check_hostname = False
    forger.load_verify_locations(certs.ca)
    forger.load_cert_chain(stranger_certs.node_cert(1), stranger_certs.node_key(1))
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(tls, forger, PEER_SERVER_NAME)
    # Its own dialer does not even trust this port's certificate.
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(tls, node_dialer(stranger_certs, 1), PEER_SERVER_NAME)


def test_one_ca_for_clients_and_peers_needs_a_secret(certs: CertSet) -> None:
    same = replace(full(certs), trusted_ca_file=certs.ca, client_cert_auth=False)
    with pytest.raises(ValueError) as info:
        load_server_tls(same, has_peer_secret=False)
    message = str(info.value)
    assert "--trusted-ca-file" in message and "--peer-trusted-ca-file" in message
    assert "--peer-secret-file" in message
    tls = load_server_tls(same, has_peer_secret=True)
    assert tls is not None and not tls.peer_ca_subjects
    # Then no certificate makes a peer, not even a node's: the secret does.
    assert not tls.is_peer(handshake(tls, node_dialer(certs, 1), PEER_SERVER_NAME))


def test_different_cas_need_no_secret(certs: CertSet) -> None:
    tls = load_server_tls(full(certs), has_peer_secret=False)
    assert tls is not None and len(tls.peer_ca_subjects) == 1


def test_a_client_ca_does_not_stop_nodes_dialing_each_other(certs: CertSet) -> None:
    """Port TLS and ``--trusted-ca-file`` (the client CA) without peer TLS: peers are
    authenticated by the secret, and their port certificates come from the cluster CA,
    not the client CA, so dialing a peer must not check them against the client CA."""
    node = TlsFiles(certs.node_cert(0), certs.node_key(0), trusted_ca_file=certs.client_ca)
    tls = load_server_tls(node, has_peer_secret=True)
    assert tls is not None
    dial = peer_dial_context(
        replace(node, cert_file=certs.node_cert(1), key_file=certs.node_key(1))
    )
    assert dial is not None
    handshake(tls, dial[0], dial[1])  # SSLError: certificate verify failed


# ------------------------------------------------------------------- clients


@pytest.mark.parametrize("given", ["cert", "key"])
def test_a_client_certificate_needs_its_key(given: str, certs: CertSet) -> None:
    kwargs = {"cert": certs.client_cert} if given == "cert" else {"key": certs.client_key}
    with pytest.raises(ValueError, match="cert and key together"):
        client_tls_context(certs.ca, **kwargs)


def test_client_context_checks_the_server(certs: CertSet, tmp_path: Path) -> None:
    context = client_tls_context(cacert=certs.ca)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version is MIN_TLS_VERSION
    missing = tmp_path / "no-ca.pem"
    with pytest.raises(ValueError, match=f"cacert: no such file: {missing}"):
        client_tls_context(cacert=missing)
    tls = peer_tls_of(certs, client_ca=False)
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(tls, context, "kvraft.example.com")  # not a name on the certificate
    handshake(tls, context, "localhost")


def test_a_given_cacert_is_the_only_ca_trusted(
    certs: CertSet, stranger_certs: CertSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like etcdctl's ``--cacert``: the system's CAs only when no cacert is given.

    The "system" CA here (``SSL_CERT_FILE``) is the stranger's, serving a port.
    """
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger_certs.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    files = TlsFiles(stranger_certs.node_cert(0), stranger_certs.node_key(0))
    stranger_port = load_server_tls(files, has_peer_secret=False)
    assert stranger_port is not None
    handshake(stranger_port, client_tls_context(), "127.0.0.1")  # the system's CAs: trusted
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(stranger_port, client_tls_context(cacert=certs.ca), "127.0.0.1")
