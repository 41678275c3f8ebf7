"""Test certificates, made by the script the docs give users: ``deploy/make-certs.sh``.

One set per session (openssl takes a second or so): a cluster CA, node
certificates 0..4 for 127.0.0.1 and localhost, a client CA and a client
certificate; plus, for tests that need a stranger, a second set from other
CAs. The suite skips what needs them where openssl is missing, with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MAKE_CERTS = Path(__file__).resolve().parents[2] / "deploy" / "make-certs.sh"
NODES = 5


@dataclass(frozen=True)
class CertSet:
    """The files ``make-certs.sh DIR`` writes."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def client_ca(self) -> Path:
        return self.dir / "client-ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"

    def node_cert(self, i: int) -> Path:
        return self.dir / f"node-{i}.pem"

    def node_key(self, i: int) -> Path:
        return self.dir / f"node-{i}-key.pem"


def make_cert_set(directory: Path, nodes: int = NODES) -> CertSet:
    """Run ``deploy/make-certs.sh`` into ``directory``; skip the test if openssl is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(directory), str(nodes)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return CertSet(directory)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """The session's certificates (see the module docstring)."""
    return make_cert_set(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def stranger_certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A second set from different CAs: what an outsider could make for itself."""
    return make_cert_set(tmp_path_factory.mktemp("stranger-certs"))
