"""``kvraft get``, ``put``, ``set``, ``del``, ``txn``, ``status``, ``bench``: cluster clients.

The data commands, etcdctl-like (``docs/data-model.md``)::

    kvraft get KEY [--json]                        # value and version (unchanged)
    kvraft get --prefix P [--limit N] [--keys-only] [--json]
    kvraft set KEY VALUE [--json] [--lease ID]     # unconditional; prints the new version
    kvraft del KEY [--version N] | --prefix P      # prints how many keys it deleted
    kvraft txn < txn.json                          # compares and two branches, as JSON
    kvraft watch KEY | --prefix P [--rev R] [--prev-kv] [--json]   # until Ctrl-C
    kvraft compact REV                             # drop the watch history below REV

``get --prefix`` prints one line per key, ``KEY<TAB>VALUE<TAB>(version N)``
(``KEY<TAB>(version N)`` with ``--keys-only``), or with ``--json`` one object
``{"kvs": [{key, value, version, create_revision, mod_revision, lease}...],
"revision", "more"}``; it reads every page (``--limit`` caps the keys).
``del KEY`` without ``--version`` deletes the key whatever its version (0 or
1 deleted); with it, NoKey or VersionMismatch exit 1 as for put.
``txn`` reads ``{"compare": [...], "success": [...], "failure": [...]}``:
a compare is ``{"key", "target", "op", "value"}`` (Compare's fields), an
operation ``{"op": "put"|"set"|"delete"|"delete_range"|"get"|"range", ...}``
with the fields of its Txn class (``key``, ``value``, ``version``, ``start``,
``end``, ``limit``, ``keys_only``), or ``prefix`` for the ranges. It prints
``{"succeeded", "revision", "responses": [...]}``. Exit codes: 0 done
(whichever branch ran), 1 NoKey / VersionMismatch / Maybe (a txn's op
failure included: nothing applied), 2 usage (bad JSON or fields), 3
unavailable.

``watch`` prints one line per event as it happens, ``REVISION<TAB>put<TAB>KEY<TAB>VALUE``
or ``REVISION<TAB>delete<TAB>KEY`` (with ``--prev-kv``, ``<TAB>prev=VALUE`` when
the key had one), or with ``--json`` one object per line ``{"type", "revision",
"kv", "prev_kv"}``; it runs until Ctrl-C (exit 130), and exits 1 with
``Compacted`` if ``--rev`` is older than the history.

Each builds its client from ``--servers`` (default ``$KVRAFT_SERVERS``, else
the local cluster that ``kvraft cluster`` starts with its defaults,
127.0.0.1:7001..7003) and turns the errors a user can meet into a one-line
message and an exit code (:mod:`kvraft.cli_common`). The client, the admin
queries and the load generator are imported inside the commands, so
``kvraft --help`` does not load them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft.cli_common import EXIT_OP_ERROR, EXIT_UNAVAILABLE, credentials, fail
from kvraft.errors import KVError, Unavailable
from kvraft.local_cluster import default_servers, describe_os_error
from kvraft.status_table import format_status_table, short_reason, status_summary

T = TypeVar("T")


def parse_servers(text: str | None) -> list[str]:
    """``--servers`` / ``$KVRAFT_SERVERS`` (comma separated), else the local cluster.

    A malformed address is a usage error (exit 2).
    """
    from kvraft.addresses import split_address

    text = text or os.environ.get("KVRAFT_SERVERS")
    if not text:
        return default_servers()
    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers:
        raise click.BadParameter("no server addresses given", param_hint="--servers")
    for server in servers:
        try:
            split_address(server)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--servers") from None
    return servers


def parse_version(ctx: click.Context, param: click.Parameter, value: Any) -> int:
    """``--version``: an integer in 0..MAX_VERSION, with a message that says so."""
    from kvraft.kv_protocol import MAX_VERSION

    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer") from None
    if not 0 <= number <= MAX_VERSION:
        raise click.BadParameter(f"{number} is not in 0..{MAX_VERSION}")
    return number


def _lease(value: Any) -> int:
    """``--lease ID``: a lease id (decimal), 0 for none."""
    from kvraft.lease_protocol import lease_id_error

    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a lease id", param_hint="--lease") from None
    why = lease_id_error(number, allow_none=True)
    if why is not None:
        raise click.BadParameter(why, param_hint="--lease")
    return number


servers_option = click.option(
    "--servers",
    envvar="KVRAFT_SERVERS",
    metavar="HOST:PORT,...",
    help="The cluster's addresses (default: $KVRAFT_SERVERS, else 127.0.0.1:7001-7003).",
)
deadline_option = click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to keep trying before reporting the cluster unavailable (exit 3).",
)
read_option = click.option(
    "--read",
    type=click.Choice(["log", "index"]),
    default="log",
    show_default=True,
    help="How gets read: log (through the Raft log) or index (read-index, no log entry;"
    " docs/reads.md).",
)


def _run_op(fn: Callable[[], T]) -> T:
    """``fn()``, with the errors a user can meet turned into a message and exit code."""
    try:
        return fn()
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except KVError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_OP_ERROR)


def _with_client(
    servers: str | None, deadline: float, op: Callable[[Any], T], *, read: str = "log"
) -> T:
    from kvraft.client.client import Client

    creds = credentials()
    client = Client(
        parse_servers(servers),
        deadline=deadline,
        token=creds.token,
        ssl=creds.ssl,
        read=read,  # type: ignore[arg-type]  # click.Choice checked it
    )
    try:
        return _run_op(lambda: op(client))
    finally:
        client.close()


@click.command()
@click.argument("key", required=False)
@click.option("--prefix", metavar="P", help="Every key that starts with P, in order.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    help="With --prefix: at most N keys (0: all).",
)
@click.option("--keys-only", is_flag=True, help="With --prefix: keys and versions, no values.")
@read_option
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def get(
    key: str | None,
    prefix: str | None,
    limit: int,
    keys_only: bool,
    read: str,
    servers: str | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Print KEY's value and version (exit 1 if there is no such key), or every key of --prefix."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give KEY or --prefix P")
    if prefix is None:
        if limit or keys_only:
            raise click.UsageError("--limit and --keys-only go with --prefix")
        assert key is not None
        value, version = _with_client(servers, deadline, lambda c: c.get(key), read=read)
        if as_json:
            click.echo(json.dumps({"key": key, "value": value, "version": version}))
        else:
            click.echo(f"{value}\t(version {version})")
        return
    result = _with_client(
        servers, deadline, lambda c: _read_prefix(c, prefix, limit, keys_only), read=read
    )
    if as_json:
        click.echo(json.dumps(_to_json(result)))
        return
    for kv in result.kvs:
        shown = "" if keys_only else f"\t{kv.value}"
        click.echo(f"{kv.key}{shown}\t(version {kv.version})")


def _read_prefix(client: Any, prefix: str, limit: int, keys_only: bool) -> Any:
    """Every key of ``prefix`` (up to ``limit``), page by page, as one RangeResult.

    Later pages are read at later revisions: the result's revision is the
    first page's, and a key written between pages may show its newer state.
    """
    from kvraft.kv_protocol import RangeResult, prefix_end

    first = client.range(prefix=prefix, limit=limit, keys_only=keys_only)
    kvs, more = list(first.kvs), first.more
    end = prefix_end(prefix)
    while more and kvs and (not limit or len(kvs) < limit):
        page = client.range(
            start=kvs[-1].key + "\0",
            end=end,
            limit=limit - len(kvs) if limit else 0,
            keys_only=keys_only,
        )
        kvs.extend(page.kvs)
        more = page.more
    return RangeResult(tuple(kvs), first.revision, more)


@click.command()
@click.argument("key")
@click.argument("value")
@click.option(
    "--version",
    "version",
    default="0",
    callback=parse_version,
    metavar="N",
    show_default=True,
    help="The key's current version (0 creates a new key).",
)
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {key, version} as JSON.")
@click.option("--lease", "lease", default="0", metavar="ID", callback=lambda c, p, v: _lease(v))
def put(
    key: str,
    value: str,
    version: int,
    servers: str | None,
    deadline: float,
    as_json: bool,
    lease: int,
) -> None:
    """Set KEY to VALUE if KEY is at --version; print the new version.

    VALUE "-" reads the value from stdin; a VALUE that starts with "-" goes
    after "--" (kvraft put KEY -- -5). Exit 1 with VersionMismatch if the
    key is at another version, NoKey if --version > 0 and there is no such
    key, Maybe if a retried put cannot tell whether its first attempt applied.
    --lease ID attaches the key to lease ID (kvraft lease grant).
    """
    if value == "-":
        value = sys.stdin.read()
    new_version = _with_client(servers, deadline, lambda c: c.put(key, value, version, lease=lease))
    if as_json:
        click.echo(json.dumps({"key": key, "version": new_version}))
    else:
        click.echo(f"ok\t(version {new_version})")


@click.command("set")
@click.argument("key")
@click.argument("value")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {key, version} as JSON.")
@click.option("--lease", "lease", default="0", metavar="ID", callback=lambda c, p, v: _lease(v))
def set_command(
    key: str, value: str, servers: str | None, deadline: float, as_json: bool, lease: int
) -> None:
    """Set KEY to VALUE whatever its version; print the new version.

    VALUE "-" reads the value from stdin, as for put. --lease ID attaches the
    key to lease ID: it is deleted when the lease expires or is revoked.
    """
    if value == "-":
        value = sys.stdin.read()
    new_version = _with_client(servers, deadline, lambda c: c.set(key, value, lease=lease))
    if as_json:
        click.echo(json.dumps({"key": key, "version": new_version}))
    else:
        click.echo(f"ok\t(version {new_version})")


@click.command("del")
@click.argument("key", required=False)
@click.option(
    "--version",
    "version",
    default=None,
    metavar="N",
    help="Delete only if KEY is at version N (exit 1 if not, as for put).",
)
@click.option("--prefix", metavar="P", help="Delete every key that starts with P.")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {deleted} as JSON.")
def delete_command(
    key: str | None,
    version: str | None,
    prefix: str | None,
    servers: str | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Delete KEY (at --version N, if given) or every key of --prefix; print how many."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give KEY or --prefix P")
    if prefix is not None and version is not None:
        raise click.UsageError("--version goes with KEY, not --prefix")
    if prefix is not None:
        deleted = _with_client(servers, deadline, lambda c: c.delete_range(prefix=prefix))
    elif version is not None:
        number = parse_version(click.get_current_context(), None, version)  # type: ignore[arg-type]
        assert key is not None
        _with_client(servers, deadline, lambda c: c.delete(key, number))
        deleted = 1
    else:
        assert key is not None
        deleted = _with_client(
            servers, deadline, lambda c: c.delete_range(start=key, end=key + "\0")
        )
    if as_json:
        click.echo(json.dumps({"deleted": deleted}))
    else:
        click.echo(f"deleted {deleted}")


@click.command()
@servers_option
@deadline_option
def txn(servers: str | None, deadline: float) -> None:
    """Run the transaction given as JSON on stdin; print its result as JSON.

    \b
    {"compare": [{"key": "a", "target": "version", "op": "==", "value": 0}],
     "success": [{"op": "set", "key": "a", "value": "1"}],
     "failure": [{"op": "get", "key": "a"}]}

    Exit 0 whichever branch ran; 1 if a versioned put or delete of the branch
    did not match (nothing applied); 2 for JSON that is not a transaction.
    """
    from kvraft.txn_json import TxnJsonError, parse_txn

    try:
        compare, success, failure = parse_txn(sys.stdin.read())
    except TxnJsonError as exc:
        raise click.UsageError(f"stdin: {exc}") from None
    result = _with_client(servers, deadline, lambda c: c.txn(compare, success, failure))
    click.echo(json.dumps(_to_json(result)))


@click.command("watch")
@click.argument("key", required=False)
@click.option("--prefix", metavar="P", help="Every key that starts with P.")
@click.option(
    "--rev",
    "start_revision",
    type=click.IntRange(min=1),
    default=None,
    help="From revision R on (inclusive); default: changes from now.",
)
@click.option("--prev-kv", is_flag=True, help="Show each changed key's previous value.")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def watch_command(
    key: str | None,
    prefix: str | None,
    start_revision: int | None,
    prev_kv: bool,
    servers: str | None,
    deadline: float,
    as_json: bool,
) -> None:
    """Print every change of KEY, or of the keys of --prefix, one line each, until Ctrl-C."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give KEY or --prefix P")

    def follow(client: Any) -> None:
        events = client.watch(key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)
        for event in events:
            click.echo(_event_line(event, as_json))

    _with_client(servers, deadline, follow)


def _event_line(event: Any, as_json: bool) -> str:
    """One watch event as the line ``kvraft watch`` prints (module docstring)."""
    if as_json:
        prev = None if event.prev_kv is None else _to_json(event.prev_kv)
        return json.dumps(
            {
                "type": event.type,
                "revision": event.revision,
                "kv": _to_json(event.kv),
                "prev_kv": prev,
            }
        )
    line = f"{event.revision}\t{event.type}\t{event.kv.key}"
    if event.type == "put":
        line += f"\t{event.kv.value}"
    if event.prev_kv is not None:
        line += f"\tprev={event.prev_kv.value}"
    return line


@click.command("compact")
@click.argument("revision", type=click.IntRange(min=1))
@servers_option
@deadline_option
def compact_command(revision: int, servers: str | None, deadline: float) -> None:
    """Drop the watch history below REVISION on every server (watches from before it fail)."""
    first = _with_client(servers, deadline, lambda c: c.compact(revision))
    click.echo(f"compacted\t(history starts at revision {first})")


def _to_json(value: Any) -> Any:
    """A result as JSON-ready data: each result object as a dict with its ``type``."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if type(value).__name__ != "KeyValue":
            fields = {"type": type(value).__name__, **fields}
        return fields
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    return value


@click.command()
@servers_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for each node.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per node, as a list.")
def status(servers: str | None, timeout: float, as_json: bool) -> None:
    """Show every node: role, term, commit and applied index, log, snapshot, leader.

    Unreachable nodes are listed as such. Exit 3 if no node answers.
    """
    from kvraft.client.admin import fetch_statuses

    creds = credentials()
    rows = fetch_statuses(parse_servers(servers), timeout, token=creds.token, ssl=creds.ssl)
    for row in rows:
        if not row.get("reachable"):
            row["error"] = short_reason(str(row.get("error", "")))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_status_table(rows))
        click.echo(status_summary(rows))
    if not any(r.get("reachable") for r in rows):
        sys.exit(EXIT_UNAVAILABLE)


@click.command()
@servers_option
@click.option(
    "--clients",
    type=click.IntRange(min=1, max=10000),
    default=64,
    show_default=True,
    help="Concurrent clients, each with one request in flight.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds measured, after the warm-up.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds run first and not measured.",
)
@click.option(
    "--workload",
    type=click.Choice(["put", "get", "mixed"]),
    default="put",
    show_default=True,
    help="put: versioned puts; get: gets of preloaded keys; mixed: half and half.",
)
@read_option
@click.option(
    "--value-size", type=click.IntRange(min=0), default=100, show_default=True, help="Bytes."
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Distinct keys (for puts, at least --clients: each put in flight owns its key).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds an operation may retry before it counts as unavailable.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Live progress line on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON to this file ('-': stdout, instead of the table).",
)
def bench(
    servers: str | None,
    clients: int,
    duration: float,
    warmup: float,
    workload: str,
    read: str,
    value_size: int,
    keys: int,
    deadline: float,
    progress: bool | None,
    json_path: Path | None,
) -> None:
    """Load a running cluster and report throughput and latency.

    CLIENTS concurrent clients (one event loop, one request in flight each)
    run the workload for --warmup + --duration seconds; the table gives the
    throughput and the p50/p95/p99/max latency of the measured part. Every
    operation goes through the Raft log, with fsync, as in production, unless
    --read index makes the gets read-index reads.
    """
    from kvraft.bench import BenchConfig, format_result, result_json, run_bench

    if workload in ("put", "mixed") and keys < clients:
        raise click.BadParameter(
            f"{keys} keys for {clients} clients: puts need at least one key per client",
            param_hint="--keys",
        )
    creds = credentials()
    config = BenchConfig(
        servers=tuple(parse_servers(servers)),
        token=creds.token,
        ssl=creds.ssl,
        clients=clients,
        duration_s=duration,
        warmup_s=warmup,
        workload=workload,  # type: ignore[arg-type]  # click.Choice checked it
        read=read,  # type: ignore[arg-type]  # click.Choice checked it
        value_size=value_size,
        keys=keys,
        deadline_s=deadline,
    )
    show_progress = sys.stderr.isatty() if progress is None else progress
    try:
        result = run_bench(config, progress=show_progress)
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except KVError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_OP_ERROR)
    to_stdout = json_path is not None and str(json_path) == "-"
    if not to_stdout:
        click.echo(format_result(result))
    if json_path is not None:
        text = json.dumps(result_json(result), indent=2)
        if to_stdout:
            click.echo(text)
        else:
            try:
                json_path.write_text(text + "\n")
            except OSError as exc:
                fail(f"cannot write {json_path}: {describe_os_error(exc)}", EXIT_OP_ERROR)
