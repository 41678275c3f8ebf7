"""A leader's round trip to each follower, from its AppendEntries and their replies.

etcd measures peer round trips with a prober of its own on a separate
stream; here the leader already sends every follower an AppendEntries at
least every heartbeat interval, and each is answered, so timing those costs
no message and no wire change. The measure, per follower, one probe at a
time:

- a probe starts when an AppendEntries (heartbeat or entries) is handed to
  the transport while no probe of that follower is out: its send time and
  the last index it carries (``prev_log_index + len(entries)``);
- it ends at the first reply from that follower that either refuses
  (a log mismatch is still an answer) or succeeds with a match index at or
  past that last index: ``observe(peer, seconds)``.

What it includes: the network both ways, the follower's queueing, and its
fsync when the probe carried entries, since a follower replies only after
persisting them. That is the round trip a commit waits for, which is what
an operator of this system needs; a quiet cluster's heartbeats measure the
network alone. Its bias: under pipelining, a reply to an earlier
AppendEntries that reached the same index closes the probe early (an
underestimate by at most the gap between the two sends). A probe
unanswered for ``lost_s`` (the message or its reply was lost) is dropped
unobserved and the next AppendEntries starts a new one.

The clock is ``time.perf_counter`` unless given: the node's own clock is
uvloop's millisecond-resolution loop time, too coarse for sub-millisecond
round trips. A clock call per probe, none per message otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvraft.raft.messages import AppendEntries, AppendEntriesReply


class PeerRoundTrips:
    """Times a leader's AppendEntries to their replies, one probe per follower."""

    def __init__(
        self,
        observe: Callable[[int, float], None],
        *,
        lost_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.observe = observe
        self.lost_s = lost_s
        self.clock = clock
        # peer -> (send time, the last index the probe carried)
        self._probes: dict[int, tuple[float, int]] = {}

    def sent(self, message: AppendEntries) -> None:
        """An AppendEntries left for ``message.dst``: start a probe unless one is out."""
        probe = self._probes.get(message.dst)
        now = self.clock()
        if probe is not None and now - probe[0] < self.lost_s:
            return
        self._probes[message.dst] = (now, message.prev_log_index + len(message.entries))

    def replied(self, reply: AppendEntriesReply) -> None:
        """An AppendEntriesReply from ``reply.src``: end its probe if this answers it."""
        probe = self._probes.get(reply.src)
        if probe is None or (reply.success and reply.match_index < probe[1]):
            return
        del self._probes[reply.src]
        self.observe(reply.src, self.clock() - probe[0])
