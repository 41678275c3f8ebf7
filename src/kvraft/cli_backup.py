"""``kvraft snapshot save|status|restore``: backups of a cluster, and new clusters from them.

- ``save FILE``: fetches a consistent snapshot from the leader (an admin
  token on secured clusters) and writes it atomically, mode 0600
  (:mod:`kvraft.backup_file`). Exit 0 saved, 1 refused (Unauthorized, the
  leader busy with other backups, a damaged transfer, the file not writable),
  3 no node answered or none leads.
- ``status FILE [--json]``: index, term, revision, keys, size, SHA-256 and
  whether it checks out; exit 1 on a damaged file, naming what is wrong.
- ``restore FILE --data-dir DIR --id N --peers ... [--cluster-id NEW]``:
  seeds a fresh data dir of a new cluster (:mod:`kvraft.restore`); prints the
  cluster id the servers must be started with. Exit 1 on a damaged file or a
  refused restore (a non-empty data dir, the old cluster's id).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kvraft.cli_clients import parse_servers, servers_option
from kvraft.cli_common import (
    EXIT_OP_ERROR,
    credentials,
    fail,
    leader_call_failures,
)
from kvraft.errors import StorageError, one_line


@click.group()
def snapshot() -> None:
    """Backups: save the leader's state to a file, check it, restore it into a new cluster."""


@snapshot.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@servers_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for each call (the leader encodes the snapshot in the first).",
)
def save(file: Path, servers: str | None, timeout: float) -> None:
    """Save a consistent snapshot of the cluster's state to FILE (atomic, mode 0600)."""
    from kvraft import backup_file
    from kvraft.client.admin import fetch_snapshot

    creds = credentials()
    try:
        with leader_call_failures(lambda exc: f"snapshot refused ({exc.code}): {exc.message}"):
            fetched = fetch_snapshot(
                parse_servers(servers), timeout, token=creds.token, ssl=creds.ssl
            )
    except ValueError as exc:
        fail(f"snapshot damaged in transfer: {exc}", EXIT_OP_ERROR)
    header = backup_file.header_for(
        fetched.cluster_id, fetched.index, fetched.term, fetched.revision, fetched.data
    )
    try:
        backup_file.write(file, header, fetched.data)
    except OSError as exc:
        fail(f"{file}: cannot write: {one_line(exc)}", EXIT_OP_ERROR)
    click.echo(
        f"saved {file}: index {header.index}, term {header.term}, revision {header.revision},"
        f" {header.data_length} bytes, sha256 {header.sha256.hex()} (from n{fetched.leader})"
    )


@snapshot.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the fields as one JSON object.")
def status(file: Path, as_json: bool) -> None:
    """Check FILE and print what it holds; exit 1 if it is damaged."""
    from kvraft.backup_file import BadBackup
    from kvraft.restore import check_backup

    try:
        header, _, keys = check_backup(file)
    except BadBackup as exc:
        if as_json:
            click.echo(json.dumps({"file": str(file), "ok": False, "error": str(exc)}))
        fail(str(exc), EXIT_OP_ERROR)
    except OSError as exc:
        fail(f"{file}: cannot read: {one_line(exc)}", EXIT_OP_ERROR)
    document = {
        "file": str(file),
        "ok": True,
        "cluster_id": header.cluster_id,
        "index": header.index,
        "term": header.term,
        "revision": header.revision,
        "keys": keys,
        "size": header.data_length,
        "sha256": header.sha256.hex(),
    }
    if as_json:
        click.echo(json.dumps(document))
        return
    click.echo(
        f"{file}: checksum OK; cluster {header.cluster_id}, index {header.index},"
        f" term {header.term}, revision {header.revision}, {keys} keys,"
        f" {header.data_length} bytes, sha256 {header.sha256.hex()}"
    )


@snapshot.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The new node's data dir: absent or empty.",
)
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="The node's id.")
@click.option(
    "--peers",
    required=True,
    help="The new cluster: ID=HOST:PORT,... (start the servers with the same).",
)
@click.option(
    "--cluster-id",
    default=None,
    help="The new cluster's id (default: a fresh random one, printed); the same for every node.",
)
def restore(file: Path, data_dir: Path, node_id: int, peers: str, cluster_id: str | None) -> None:
    """Seed a fresh data dir of a NEW cluster from FILE; prints the cluster id to start with."""
    from kvraft.backup_file import BadBackup
    from kvraft.restore import RestoreRefused, new_cluster_id
    from kvraft.restore import restore as do_restore
    from kvraft.server.options import parse_peers

    try:
        peer_map = parse_peers(peers)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peers") from None
    new_id = cluster_id if cluster_id is not None else new_cluster_id()
    try:
        done = do_restore(file, data_dir, node_id=node_id, peers=peer_map, cluster_id=new_id)
    except (BadBackup, RestoreRefused, StorageError) as exc:
        fail(str(exc), EXIT_OP_ERROR)
    except OSError as exc:
        fail(f"restore failed: {one_line(exc)}", EXIT_OP_ERROR)
    click.echo(
        f"restored n{node_id} in {data_dir}: index {done.header.index}, term {done.header.term},"
        f" {done.keys} keys; start it with --cluster-id {done.cluster_id}"
    )
    click.echo(done.cluster_id)
