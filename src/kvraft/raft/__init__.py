"""The Raft consensus core, sans-I/O: a pure state machine, no clock, sockets or files.

Theory of operation. Three inputs move a :class:`~kvraft.raft.core.RaftCore`:
``tick()`` (one unit of logical time), ``step(message)`` (a message from a
peer) and ``propose(command)`` (from the replicated state machine). None of them
performs I/O: their effects collect into a :class:`~kvraft.raft.ready.Ready`
(what to persist, what to send, what to apply) that the driver takes with
``ready()``, performs in the durability order stated in :mod:`kvraft.raft.ready`
(persist, send, apply), and acknowledges with ``advance()``. Randomness comes
only from ``RaftConfig.rng``, so a seeded simulation replays exactly.

Layering, bottom up:

- ``messages``, ``ready``, ``config``, ``storage``: the interface the driver is
  written against (typed messages, the Ready batch, settings in ticks with the
  one definition of the timing defaults, the storage protocol and its
  in-memory twin);
- ``quorum``: majority arithmetic (commit index, vote tallies);
- ``log``: the in-memory log after a snapshot, its consistency check, and how
  far it was handed out and persisted;
- ``progress``: a leader's pacing of one follower (probe, pipelined replicate,
  snapshot);
- ``validate``: which network messages make sense at all;
- ``snapshot``: a follower's assembly of InstallSnapshot chunks;
- ``election``: the election timer (randomized timeouts; whether a leader was
  heard from within one, for its lease)
  and a (pre-)candidate's round of vote requests and replies;
- ``follower``: the follower's side of replication (the log's consistency
  check and repair, the commit index a leader allows, snapshot chunks, the
  replies);
- ``transfer``: the rules of a leadership transfer (thesis §3.10) and its
  state while one runs;
- ``read_index``: the rules of read-index reads (thesis §6.4) and a
  leader's bookkeeping of its reads and their heartbeat rounds;
- ``leader``: the leader's side of replication (batching, heartbeats, fast
  backtracking, the commit index, check-quorum, a transfer in progress,
  the rounds that confirm read-index reads);
- ``core``: terms and roles (when to campaign, follow, lead or step down, with
  pre-vote and leader leases), granting votes, and the Ready handshake.

Extensions beyond the paper's Figure 2, as real clusters need them: pre-vote
(thesis §9.6), check-quorum with leader leases (§6.2, §4.2.3), fast log
backtracking with conflict hints, batching and pipelining (§10.2), snapshots
sent in chunks (Figure 13), leadership transfer (§3.10), read-index reads
without a log entry (§6.4; no lease reads).
"""
