"""Durable Raft state: the log, currentTerm, votedFor, commit hint and snapshot of one node.

Theory of operation. The sans-I/O core hands the driver Ready batches; the
driver persists each through :class:`SqliteStorage` (the
:class:`kvraft.raft.storage.Storage` protocol) before sending anything that
depends on it. One SQLite database per node, ``<data_dir>/raft.db``, in WAL
mode with ``synchronous=FULL``, plus the current snapshot's data in
``<data_dir>/snapshot-<index>-<term>-<token>.snap``: a save is one transaction and one fsync, and
SQLite's WAL makes a transaction all-or-nothing under SIGKILL or power loss.
What SQLite cannot know — whose data dir this is, whether a row's bytes are
the ones written, whether the log still obeys Raft's invariants — the store
records and checks itself, refusing to start rather than use doubtful state.

Layering, bottom up:

- :mod:`~kvraft.storage.records`: row <-> Raft value, per-row CRC32, and the
  checks a loaded state must pass;
- :mod:`~kvraft.storage.schema`: the file, its schema and format version, its
  identity (cluster id, node id), creation and the exclusive lock;
- :mod:`~kvraft.storage.snapshot_files`: a snapshot's data in a file of its own
  beside the database (written off the storage thread), which a row names;
- :mod:`~kvraft.storage.sqlite`: :class:`SqliteStorage`, the Storage protocol
  on top, with in-memory bookkeeping for validation and ``size_bytes``.
"""

from kvraft.storage.sqlite import SqliteStorage

__all__ = ["SqliteStorage"]
