"""``kvraft cluster``'s secret file: created once, private from the first instant, kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kvraft.local_cluster import ensure_peer_secret
from kvraft.rpc.peer_auth import MIN_SECRET_BYTES, check_secret


def test_secret_file_is_created_private_and_random(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        path = ensure_peer_secret(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(check_secret(path.read_bytes())) >= MIN_SECRET_BYTES
    other = tmp_path / "other"
    other.mkdir()
    assert ensure_peer_secret(other).read_bytes() != path.read_bytes()


def test_an_existing_secret_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "peer-secret"
    path.write_bytes(b"an-operator-chosen-secret\n")
    assert ensure_peer_secret(tmp_path) == path
    assert path.read_bytes() == b"an-operator-chosen-secret\n"
