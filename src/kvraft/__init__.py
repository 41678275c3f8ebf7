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
3. ``kv_protocol``: the key-value commands and results both ends share. Pure.
4. ``rpc``: frames, the one codec and its table of wire types, the TCP ends.
5. ``loop_thread``: an asyncio loop on a thread of its own, for blocking callers.
6. ``client``: ``AsyncClient``, ``Client``, ``Lock``, operators' status queries.
7. ``storage``: Raft's durable state in SQLite, behind raft's storage interface.
8. ``server``: the node: Raft driver, replicated state machine, versioned KV.
9. ``__init__``: this module, the public face: the client API and errors.
10. ``status_table``, ``local_cluster``, ``bench``: what the commands do.
11. ``testing``: fault proxy, process cluster, linearizability checker; for
    tests, so no shipped module imports it but the command line's.
12. ``cli``, ``__main__``: the ``kvraft`` command.

Only the client API and errors are public here.
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
