"""kvraft: a fault-tolerant, linearizable key-value service replicated with Raft.

Layering, bottom up: ``rpc`` (frames over TCP), ``raft`` (sans-I/O consensus
core), ``storage`` (durable Raft state in SQLite), ``server`` (the asyncio node:
Raft driver, replicated state machine, versioned KV), ``client`` (cluster-aware
client and lock). Only the client API, the errors and ``__version__`` are
public here::

    from kvraft import Client, AsyncClient, Lock, KVError, NoKey, VersionMismatch, Maybe

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
    InvalidArgument,
    KVError,
    Maybe,
    NoKey,
    Unavailable,
    VersionMismatch,
    WrongLeader,
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from kvraft.client.async_client import AsyncClient
    from kvraft.client.client import Client
    from kvraft.client.lock import Lock

# The one source of the version: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), so it is right in a source checkout, an editable
# install and a wheel alike, and costs no importlib.metadata lookup at import.
__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "AsyncClient": "kvraft.client.async_client",
    "Client": "kvraft.client.client",
    "Lock": "kvraft.client.lock",
}

__all__ = [
    "AsyncClient",
    "Client",
    "InvalidArgument",
    "KVError",
    "Lock",
    "Maybe",
    "NoKey",
    "Unavailable",
    "VersionMismatch",
    "WrongLeader",
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
