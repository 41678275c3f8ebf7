"""Backups on real processes: ``kvraft snapshot save`` from a loaded 3-node cluster, ``restore``
into a fresh 3-node cluster (new data dirs, new ports, a new cluster id), every key equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvraft.client.client import Client
from kvraft.kv_protocol import KeyValue
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History

from .kv_support import OP_DEADLINE_S, BackgroundPutters

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 120.0
KEYS = 300
# Small frames on the old cluster, so that its snapshot (~300 keys of ~500 bytes) comes
# in several chunks: the chunking is exercised end to end.
SMALL_FRAMES = ("--max-frame-bytes", "65536", "--max-value-bytes", "4096")
PAD = "x" * 500


def kvraft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def everything(cluster: Cluster) -> tuple[int, list[KeyValue]]:
    """The cluster's revision and every key with its value, version and revisions.

    Read in pages (a range reply must fit a frame); the cluster takes no writes meanwhile.
    """
    client = Client(cluster.private_addresses, deadline=OP_DEADLINE_S)
    try:
        kvs: list[KeyValue] = []
        revisions = set()
        start = "\0"
        while True:
            result = client.range(start=start, end="\U0010ffff", limit=50)
            revisions.add(result.revision)
            kvs.extend(result.kvs)
            if not result.more:
                break
            start = result.kvs[-1].key + "\0"
        assert len(revisions) == 1, f"the cluster was written to while read: {revisions}"
        return revisions.pop(), kvs
    finally:
        client.close()


def restore_into(make_cluster, backup: Path, cluster_id: str) -> Cluster:  # type: ignore[no-untyped-def]
    """A new, stopped 3-node cluster seeded node by node from ``backup``; then started."""
    cluster = make_cluster(3, cluster_id=cluster_id, start=False)
    peers = ",".join(f"{i}={address}" for i, address in enumerate(cluster.addresses))
    for i in range(3):
        done = kvraft(
            "snapshot", "restore", str(backup), "--data-dir", str(cluster.data_dir(i)),
            "--id", str(i), "--peers", peers, "--cluster-id", cluster_id,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == cluster_id
    cluster.start()
    return cluster


def test_save_under_load_then_restore_into_a_new_cluster_keeps_every_key_and_version(
    make_cluster, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Known keys (several versions, a delete) written under load; the load stops; a save;
    a new cluster restored from it holds exactly the old one's keys, versions and revision.
    A second save while puts are in flight checks out and restores into a cluster that serves.
    """
    old = make_cluster(3, server_args=SMALL_FRAMES)
    servers = ",".join(old.private_addresses)
    history = History()
    load = BackgroundPutters(old, history, n=2)
    client = Client(old.private_addresses, deadline=OP_DEADLINE_S)
    try:
        for i in range(KEYS):
            client.set(f"k{i:04d}", f"v{i}{PAD}")
        for i in range(0, KEYS, 3):
            client.set(f"k{i:04d}", f"v{i}-again")
        client.delete(f"k{1:04d}", 1)
    finally:
        load.finish()
    assert load.total() > 0, "the load made no puts"
    revision, kvs = everything(old)
    assert len(kvs) >= KEYS - 1

    backup = tmp_path / "backup.kvb"
    saved = kvraft("snapshot", "save", str(backup), "--servers", servers)
    assert saved.returncode == 0, saved.stderr
    assert backup.stat().st_mode & 0o777 == 0o600
    status = kvraft("snapshot", "status", str(backup), "--json")
    assert status.returncode == 0, status.stderr
    described = json.loads(status.stdout)
    assert described["ok"] is True
    assert described["cluster_id"] == old.cluster_id
    assert described["keys"] == len(kvs)
    assert described["revision"] == revision
    assert described["size"] > 65536, "the snapshot fits one frame: no chunking tested"

    new = restore_into(make_cluster, backup, "restored-one")
    assert everything(new) == (revision, kvs)
    assert set(new.private_ports).isdisjoint(old.private_ports)
    # The new cluster takes writes, from the revision on.
    client = Client(new.private_addresses, deadline=OP_DEADLINE_S)
    try:
        assert client.set("after-restore", "x") == 1
        assert client.get(f"k{0:04d}") == ("v0-again", 2)
    finally:
        client.close()

    # A save with puts in flight: a consistent state, restorable.
    load = BackgroundPutters(old, History(), n=2)
    try:
        loaded_backup = tmp_path / "loaded.kvb"
        saved = kvraft("snapshot", "save", str(loaded_backup), "--servers", servers)
        assert saved.returncode == 0, saved.stderr
    finally:
        load.finish()
    status = kvraft("snapshot", "status", str(loaded_backup), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["keys"] >= len(kvs)
    third = restore_into(make_cluster, loaded_backup, "restored-two")
    third_revision, third_kvs = everything(third)
    assert third_revision >= revision
    assert {kv.key for kv in kvs} <= {kv.key for kv in third_kvs}
    client = Client(third.private_addresses, deadline=OP_DEADLINE_S)
    try:
        client.set("after-restore", "y")
        assert client.get("after-restore") == ("y", 1)
    finally:
        client.close()


def test_a_restored_node_refuses_the_old_cluster_id(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The restored data dir belongs to the new cluster id: a server started with the old
    one is refused at open, so the two clusters can never mix."""
    old = make_cluster(1)
    client = Client(old.private_addresses, deadline=OP_DEADLINE_S)
    try:
        client.set("a", "1")
    finally:
        client.close()
    backup = tmp_path / "one.kvb"
    saved = kvraft("snapshot", "save", str(backup), "--servers", old.private_addresses[0])
    assert saved.returncode == 0, saved.stderr
    data_dir = tmp_path / "restored"
    peers = f"0={old.private_addresses[0]}"
    same = kvraft(
        "snapshot", "restore", str(backup), "--data-dir", str(data_dir), "--id", "0",
        "--peers", peers, "--cluster-id", old.cluster_id,
    )  # fmt: skip
    assert same.returncode == 1
    assert "new cluster id" in same.stderr
    done = kvraft(
        "snapshot", "restore", str(backup), "--data-dir", str(data_dir), "--id", "0",
        "--peers", peers,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.splitlines()[-1]
    assert new_id.startswith("restored-") and new_id != old.cluster_id
    from kvraft.errors import StorageError
    from kvraft.storage.sqlite import SqliteStorage

    with pytest.raises(StorageError, match="cluster"):
        SqliteStorage.open(data_dir, cluster_id=old.cluster_id, node_id=0)
    SqliteStorage.open(data_dir, cluster_id=new_id, node_id=0).close()


def test_save_needs_an_admin_token(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On a server with tokens, a readwrite token may not take a backup; an admin token may."""
    admin, writer = (
        "admin-token-for-the-backup-0123456789",
        "writer-token-for-the-backup-0123456789",
    )
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{admin} admin\n{writer} readwrite\n")
    cluster = make_cluster(1, server_args=("--auth-token-file", str(tokens)))
    server = cluster.private_addresses[0]
    client = Client(cluster.private_addresses, deadline=OP_DEADLINE_S, token=writer)
    try:
        client.set("a", "1")
    finally:
        client.close()
    backup = tmp_path / "b.kvb"
    refused = kvraft("--token", writer, "snapshot", "save", str(backup), "--servers", server)
    assert refused.returncode == 1
    assert "Unauthorized" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not backup.exists()
    saved = kvraft("--token", admin, "snapshot", "save", str(backup), "--servers", server)
    assert saved.returncode == 0, saved.stderr
    assert kvraft("snapshot", "status", str(backup)).returncode == 0
