"""kvraft: a fault-tolerant, linearizable key-value service replicated with Raft.

Layering, bottom up: ``rpc`` (frames over TCP), ``raft`` (sans-I/O consensus
core), ``storage`` (durable Raft state in SQLite), ``server`` (the asyncio node:
Raft driver, replicated state machine, versioned KV), ``client`` (cluster-aware
client and lock). Only the client API and errors are public here.
"""

from kvraft.errors import (
    InvalidArgument,
    KVError,
    Maybe,
    NoKey,
    Unavailable,
    VersionMismatch,
    WrongLeader,
)

__all__ = [
    "InvalidArgument",
    "KVError",
    "Maybe",
    "NoKey",
    "Unavailable",
    "VersionMismatch",
    "WrongLeader",
]
