"""kvraft: a fault-tolerant, linearizable key-value service replicated with Raft.

Layering, bottom up. A module imports from its own layer and the layers below
it, never from above, so each layer works without those above it: the core
runs in a simulator, the client carries no server code (client and server
share only the protocol and the RPC layer below both), and nothing shipped
depends on test tooling. ``tests/test_layers.py`` reads this list and checks
every import of every module (in functions and ``TYPE_CHECKING`` blocks too);
``docs/architecture.md`` shows the same table.

1. ``errors``, ``addresses``: errors by whose fault; ``host:port`` parsing. Pure.
2. ``raft``: the consensus core, sans-I/O down to its import closure.
3. ``kv_protocol``, ``lease_protocol``: the key-value and lease commands and results both
   ends share. Pure.
4. ``rpc``: frames, the one codec and its table of wire types, the TCP ends.
5. ``loop_thread``: an asyncio loop on a thread of its own, for blocking callers.
6. ``client``: ``AsyncClient``, ``Client``, ``Lock``, operators' status queries.
7. ``storage``: Raft's durable state in SQLite, behind raft's storage interface.
8. ``server``: the node: Raft driver, replicated state machine, versioned KV.
9. ``__init__``: this module, the public face: the client API and errors.
10. ``status_table``, ``local_cluster``, ``bench``, ``txn_json``, ``backup_file``, ``restore``:
    what the commands do.
11. ``testing``: fault proxy, process cluster, linearizability checker; for
    tests, so no shipped module imports it but the command line's.
12. ``cli``, ``cli_servers``, ``cli_clients``, ``cli_admin``, ``cli_backup``, ``cli_common``,
    ``cli_leases``, ``__main__``:
    the ``kvraft`` command.

Only the client API, the errors and ``__version__`` are public here::

    from kvraft import Client, AsyncClient, Lock, KVError, NoKey, VersionMismatch, Maybe

and the data API's classes (``kvraft.kv_protocol``): the results ``KeyValue``,
``RangeResult``, ``TxnResult``, ``PutOk``, ``SetOk``, ``DeleteOk``, a txn's
``Compare`` and operations ``TxnPut``, ``TxnSet``, ``TxnDelete``,
``TxnDeleteRange``, ``TxnGet``, ``TxnRange``, and ``prefix_end``; a watch's
``WatchEvent`` and its error ``Compacted``.

Why the client names are loaded lazily (PEP 562 ``__getattr__``): every module
of the package, the sans-I/O Raft core included, imports ``kvraft.errors``, and
importing any submodule runs this file first. An eager ``from kvraft.client
import ...`` here would pull the client, the RPC transport, asyncio, sockets
and msgpack into every ``import kvraft.raft.core``, and would be an import
cycle for the client modules themselves (they import ``kvraft.errors`` while
this file would still be importing them). So this file imports only the
errors; ``kvraft.Client`` imports the client on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvraft.errors import (
    Busy,
    ClientClosed,
    Compacted,
    InvalidArgument,
    KVError,
    LeaseLimit,
    LeaseNotFound,
    LockStateUnknown,
    Maybe,
    NoKey,
    Unauthorized,
    Unavailable,
    VersionMismatch,
    WrongLeader,
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kvraft.client.async_client import AsyncClient
    from kvraft.client.client import Client
    from kvraft.client.election import Election
    from kvraft.client.leases import KeptLease, Lease
    from kvraft.client.lock import Lock
    from kvraft.kv_protocol import (
        Compare,
        DeleteOk,
        KeyValue,
        PutOk,
        RangeResult,
        SetOk,
        TxnDelete,
        TxnDeleteRange,
        TxnGet,
        TxnPut,
        TxnRange,
        TxnResult,
        TxnSet,
        WatchEvent,
        prefix_end,
    )
    from kvraft.lease_protocol import LeaseTtlResult
    from kvraft.rpc.tls import client_tls_context

# The one source of the version: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), so it is right in a source checkout, an editable
# install and a wheel alike, and costs no importlib.metadata lookup at import.
__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "AsyncClient": "kvraft.client.async_client",
    "Client": "kvraft.client.client",
    "Lock": "kvraft.client.lock",
    "Election": "kvraft.client.election",
    "Lease": "kvraft.client.leases",
    "KeptLease": "kvraft.client.leases",
    "LeaseTtlResult": "kvraft.lease_protocol",
    "client_tls_context": "kvraft.rpc.tls",
    **{
        name: "kvraft.kv_protocol"
        for name in (
            "Compare",
            "DeleteOk",
            "KeyValue",
            "PutOk",
            "RangeResult",
            "SetOk",
            "TxnDelete",
            "TxnDeleteRange",
            "TxnGet",
            "TxnPut",
            "TxnRange",
            "TxnResult",
            "TxnSet",
            "WatchEvent",
            "prefix_end",
        )
    },
}

__all__ = [
    "AsyncClient",
    "Busy",
    "Client",
    "ClientClosed",
    "Compacted",
    "Compare",
    "DeleteOk",
    "Election",
    "InvalidArgument",
    "KVError",
    "KeptLease",
    "KeyValue",
    "Lease",
    "LeaseLimit",
    "LeaseNotFound",
    "LeaseTtlResult",
    "Lock",
    "LockStateUnknown",
    "Maybe",
    "NoKey",
    "PutOk",
    "RangeResult",
    "SetOk",
    "TxnDelete",
    "TxnDeleteRange",
    "TxnGet",
    "TxnPut",
    "TxnRange",
    "TxnResult",
    "TxnSet",
    "Unauthorized",
    "Unavailable",
    "VersionMismatch",
    "WatchEvent",
    "WrongLeader",
    "client_tls_context",
    "prefix_end",
]


def __getattr__(name: str) -> Any:
    """Import a client name on first access and keep it as a module attribute."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
