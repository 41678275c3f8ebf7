"""What the core hands its driver: persistent state and the Ready batch.

The durability order (Raft thesis §3.8; etcd raft's Ready contract), performed
by the driver's one loop for every Ready, in this order:

1. persist ``snapshot`` (if any), ``hard_state`` (if any) and ``entries`` in one
   atomic, fsynced write — votes and terms are on disk before any message that
   depends on them leaves, log entries before they are acknowledged;
2. send ``messages`` — or, if ``send_before_persist``, send them first and
   persist meanwhile (a leader's messages; Raft thesis §10.2.1, see below);
3. restore the state machine from ``snapshot`` (if any), then apply
   ``committed`` entries in index order; then answer ``reads`` (each once the
   state machine has applied its index) and fail ``failed_reads``;
4. call ``core.advance(ready)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvraft.raft.membership import Membership
from kvraft.raft.messages import Entry, Message
from kvraft.raft.read_index import ReadState


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log.

    ``commit_index`` is a hint persisted so a restarted node can apply what it
    knows was committed without waiting for a leader; it is never larger than
    the persisted log's last index.
    """

    current_term: int = 0
    voted_for: int | None = None
    commit_index: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of log ``index`` (whose term is ``term``)."""

    index: int
    term: int
    data: bytes
    # The configuration as of ``index`` (thesis §4.1: compaction keeps it).
    # None only for a snapshot of a cluster whose log never held one (its seed
    # from ``--peers`` is still in force) or one built by a test.
    # Not part of equality: the state is the same whichever way it was labelled.
    config: Membership | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PersistentState:
    """Everything a node loads from storage at start."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    # Invariant: contiguous, starting at (snapshot.index if snapshot else 0) + 1.
    entries: tuple[Entry, ...] = ()


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver; see the module docstring for the order.

    - ``hard_state``: persist if not None: the term or vote changed, or the
      commit index changed and this Ready writes entries anyway (the commit
      index alone is a hint, not worth an fsync before applying).
    - ``entries``: append to the log; if ``entries[0].index`` is at or below the
      last stored index, first delete stored entries from that index on.
    - ``snapshot``: received from a leader; if not None, the stored log is
      replaced by the snapshot followed by exactly ``entries``.
    - ``messages``: send after persisting, unless ``send_before_persist``.
    - ``send_before_persist``: True when every message depends on nothing this
      Ready persists, so the driver may send them before (or while) it
      persists: the messages of a leader whose term and vote are already on
      disk. A leader may replicate entries before they are on its own disk
      (Raft thesis §10.2.1) because it counts itself toward a commit only for
      entries it has persisted (``advance`` tells it); its AppendEntries,
      heartbeats, snapshot chunks and refusals of stale terms promise nothing
      about its own disk. A follower's acknowledgement or a vote does, and is
      never sent early. This takes the leader's fsync off the commit path.
    - ``committed``: newly committed entries, to apply in order after
      persisting (and after restoring ``snapshot``).
    - ``reads``: read-index reads a majority confirmed (``core.read_index``):
      answer each from the state machine once it has applied ``index`` —
      after this Ready's ``committed``, which reach it unless a snapshot
      is still being restored.
    - ``failed_reads``: request ids of reads the node can no longer confirm
      (it stopped leading): answer them as from a node that is not leader.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    send_before_persist: bool = False
    reads: list[ReadState] = field(default_factory=list)
    failed_reads: list[int] = field(default_factory=list)
