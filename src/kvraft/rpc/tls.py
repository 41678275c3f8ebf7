"""TLS for a node's one port: the server's context, the context a node dials its peers with,
the context a client dials with, and telling a peer's certificate from a client's.

Why one port: a kvraft node serves clients and peers on ``--listen``, and a
client's ``NotLeader`` hint is the leader's address in ``--peers``. So TLS
is all or nothing per port: with ``--cert-file`` every connection to it,
client or peer, speaks TLS, and no plaintext byte is served (no downgrade).
The flags are etcd's:

- ``--cert-file/--key-file``: the certificate the port presents to everyone.
- ``--trusted-ca-file`` with ``--client-cert-auth``: clients must present a
  certificate signed by that CA.
- ``--peer-cert-file/--peer-key-file/--peer-trusted-ca-file``: mutual TLS
  between nodes. A node dials a peer presenting its peer certificate and
  checks the peer's port certificate against the peer CA (so the node
  certificates of a cluster are signed by its peer CA); the port asks every
  caller for a certificate and verifies one against the peer CA (and the
  client CA).

A connection is a *TLS peer* when the certificate it presented was verified
and was issued by the peer CA (:meth:`ServerTls.is_peer`): then it may claim
a member's id without the secret handshake (``--peer-secret-file`` is then
optional, and both run when both are given). That test is by the issuer's
name; it is sound because the certificate verified against a store whose
only CA of that name is the peer CA: :func:`load_server_tls` refuses a
client CA with the same subject unless a secret tells peers apart instead.
Peer certificates are signed directly by the peer CA (no intermediate).

Certificates and keys are read once at start; paths appear in errors, their
contents never.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The SNI a node sends when it dials a peer: peers are reached by address and
# checked against the peer CA, not by host name (the harnesses reach peers
# through proxies on other addresses).
PEER_SERVER_NAME = "kvraft-peer"
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2

Subject = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True)
class TlsFiles:
    """The TLS flags of ``kvraft server``, as paths; all None means no TLS."""

    cert_file: Path | None = None
    key_file: Path | None = None
    trusted_ca_file: Path | None = None
    client_cert_auth: bool = False
    peer_cert_file: Path | None = None
    peer_key_file: Path | None = None
    peer_trusted_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def peer_tls(self) -> bool:
        return self.peer_cert_file is not None

    def check(self) -> None:
        """ValueError (a usage error) for a combination that cannot work."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--cert-file and --key-file go together")
        if (self.peer_cert_file is None) != (self.peer_key_file is None):
            raise ValueError("--peer-cert-file and --peer-key-file go together")
        if self.client_cert_auth and self.trusted_ca_file is None:
            raise ValueError("--client-cert-auth needs --trusted-ca-file")
        if self.trusted_ca_file is not None and self.cert_file is None:
            raise ValueError("--trusted-ca-file needs --cert-file (TLS on the port)")
        if self.peer_tls and self.cert_file is None:
            raise ValueError(
                "--peer-cert-file needs --cert-file: clients and peers share one port,"
                " which speaks TLS to both or to neither"
            )
        if self.peer_tls != (self.peer_trusted_ca_file is not None):
            raise ValueError(
                "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file go together"
            )
        if self.client_cert_auth and not self.peer_tls:
            raise ValueError(
                "--client-cert-auth needs the --peer-* TLS flags: peers dial the same port"
                " and must present a certificate too"
            )


class ServerTls:
    """The port's TLS context and the test that makes a connection a TLS peer."""

    def __init__(self, context: ssl.SSLContext, peer_ca_subjects: frozenset[Subject]) -> None:
        self.context = context
        self.peer_ca_subjects = peer_ca_subjects

    def is_peer(self, ssl_object: Any) -> bool:
        """Whether the connection's verified certificate was issued by the peer CA."""
        if ssl_object is None or not self.peer_ca_subjects:
            return False
        cert = ssl_object.getpeercert()
        if not cert:  # none presented (or not verified: then it has no fields)
            return False
        return _subject(cert.get("issuer", ())) in self.peer_ca_subjects


def _subject(value: Any) -> Subject:
    return tuple(tuple((str(k), str(v)) for k, v in rdn) for rdn in value)


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path, flag: str) -> None:
    for path in (cert, key):
        if not path.is_file():
            raise ValueError(f"{flag}: no such file: {path}")
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"{flag}: no such file: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{flag}: cannot load {cert} with its key {key}: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: Path, flag: str) -> frozenset[Subject]:
    """Add ``ca`` to the context's store; the subjects of the CAs it holds."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=ca)
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ValueError(f"{flag}: no such file: {ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{flag}: cannot load CA certificates from {ca}: {exc}") from None
    subjects = frozenset(_subject(c["subject"]) for c in probe.get_ca_certs())
    if not subjects:
        raise ValueError(f"{flag}: {ca} holds no CA certificate")
    return subjects


def load_server_tls(files: TlsFiles, *, has_peer_secret: bool) -> ServerTls | None:
    """The port's context (None without ``--cert-file``); ValueError naming the bad flag."""
    files.check()
    if files.cert_file is None or files.key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_TLS_VERSION
    _load_cert_chain(context, files.cert_file, files.key_file, "--cert-file")
    client_cas: frozenset[Subject] = frozenset()
    peer_cas: frozenset[Subject] = frozenset()
    if files.trusted_ca_file is not None:
        client_cas = _load_ca(context, files.trusted_ca_file, "--trusted-ca-file")
    if files.peer_trusted_ca_file is not None:
        peer_cas = _load_ca(context, files.peer_trusted_ca_file, "--peer-trusted-ca-file")
        if peer_cas & client_cas:
            if not has_peer_secret:
                raise ValueError(
                    "--trusted-ca-file and --peer-trusted-ca-file name the same CA, so a"
                    " certificate cannot tell a peer from a client: give --peer-secret-file"
                    " too, or sign client certificates with another CA"
                )
            peer_cas = frozenset()  # the secret handshake alone identifies peers
    if files.client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    elif files.peer_trusted_ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # peers present one, clients need not
    else:
        context.verify_mode = ssl.CERT_NONE
    return ServerTls(context, peer_cas)


def peer_dial_context(files: TlsFiles) -> tuple[ssl.SSLContext, str] | None:
    """What a node dials its peers with when their ports speak TLS: the context and the SNI.

    With peer TLS: its peer certificate, checking the peer's port
    certificate against the peer CA. With client TLS only: an encrypted
    channel whose far end only the secret handshake authenticates
    (``--trusted-ca-file`` is the CA of client certificates, not of nodes').
    """
    files.check()
    if files.cert_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MIN_TLS_VERSION
    context.check_hostname = False  # peers are checked by CA (and secret), not by name
    if files.peer_cert_file is not None and files.peer_key_file is not None:
        assert files.peer_trusted_ca_file is not None
        _load_cert_chain(context, files.peer_cert_file, files.peer_key_file, "--peer-cert-file")
        _load_ca(context, files.peer_trusted_ca_file, "--peer-trusted-ca-file")
        context.verify_mode = ssl.CERT_REQUIRED
    else:  # the secret authenticates the far end; --trusted-ca-file is the clients' CA
        context.verify_mode = ssl.CERT_NONE
    return context, PEER_SERVER_NAME


def client_tls_context(
    cacert: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """A context for ``Client(..., ssl=...)``: like etcdctl's ``--cacert/--cert/--key``.

    ``cacert``: the CA that signed the servers' certificates (the system's
    CAs when None); ``cert``/``key``: this client's certificate, for servers
    started with ``--client-cert-auth``. Server certificates are checked,
    host names (or IP addresses) included. ValueError for a file that
    cannot be loaded.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key: give cert and key together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks certificates and host names
    context.minimum_version = MIN_TLS_VERSION
    if cacert is not None:
        _load_ca(context, Path(cacert), "cacert")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None and key is not None:
        _load_cert_chain(context, Path(cert), Path(key), "cert")
    return context
