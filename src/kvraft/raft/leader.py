"""The leader's half of log replication, alive for one term of leadership.

Seam: :class:`~kvraft.raft.core.RaftCore` decides *when* a node leads (elections,
terms, stepping down); a :class:`Leader` decides *what to send to whom* while it
does: AppendEntries batched and pipelined per follower (paced by
:mod:`~kvraft.raft.progress`), heartbeats, snapshot chunks, fast backtracking on
refusals, the commit index, check-quorum, a leadership transfer in
progress (the rules are :mod:`~kvraft.raft.transfer`'s), and the heartbeat
rounds that confirm read-index reads (the rules are
:mod:`~kvraft.raft.read_index`'s). It reads the core's log and snapshot and
advances the core's ``commit_index``; messages go out through the core's outbox.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvraft.raft import membership, quorum
from kvraft.raft.log import NO_TERM
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    TimeoutNow,
)
from kvraft.raft.progress import Progress, ProgressState
from kvraft.raft.read_index import ReadIndex
from kvraft.raft.ready import Snapshot
from kvraft.raft.transfer import Transfer

if TYPE_CHECKING:
    from kvraft.raft.core import RaftCore

logger = logging.getLogger("kvraft.raft")

# Heartbeat intervals without an acknowledgement, while AppendEntries are in
# flight, after which the leader resends from the follower's match: long enough
# that a slow disk or link is not mistaken for a loss (which would resend a
# whole pipeline), short enough to repair losses faster than waiting for the
# follower to refuse a later message.
STALLED_HEARTBEATS = 2


class Leader:
    """Replication state of a leader: one :class:`Progress` per follower."""

    def __init__(self, core: RaftCore, send: Callable[[Message], None]) -> None:
        self.core = core
        self.id = core.id
        self.term = core.current_term  # a leader's term never changes
        self.config = core.config
        self.log = core.log
        self._send = send
        inflight = max(1, core.config.max_inflight_messages)
        # Raft Figure 2: nextIndex starts just after the leader's last entry, matchIndex at 0.
        self._inflight = inflight
        # One per member of the latest configuration but us, learners included
        # (they get entries and snapshots); see sync_members.
        self.progress: dict[int, Progress] = {}
        # Peers to send to at the next Ready (True: even with no new entries,
        # e.g. to carry a new commit index). Sending lazily batches proposals.
        self._to_send: dict[int, bool] = {}
        self._heartbeat_elapsed = 0
        self._quorum_elapsed = 0  # ticks into the current check-quorum period
        # The snapshot last sent, framed with its configuration, and the CRC32
        # of that: computed once per snapshot (a large one takes tens of ms),
        # not once per chunk.
        self._checksummed: tuple[Snapshot, bytes, int] | None = None
        # A leadership transfer in progress; while set, the core takes no proposal.
        self.transfer: Transfer | None = None
        # Read-index reads and their rounds; round ids come from the core's counter.
        self.reads = ReadIndex(last_round=core.read_rounds_drawn)
        # Thesis §6.4: whether an entry of our term has committed (reads wait for it).
        self.term_committed = False
        self.sync_members()

    # ------------------------------------------------------------------ timing

    def tick(self) -> bool:
        """One tick: heartbeats, and check-quorum; False if the leader must step down."""
        self._heartbeat_elapsed += 1
        self._quorum_elapsed += 1
        transfer = self.transfer
        if transfer is not None and not transfer.tick():
            # Thesis §3.10: abort after an election timeout, take proposals again.
            self.transfer = None
            self._log(
                logging.INFO,
                "abandoned transfer to n%d after %d ticks (TimeoutNow sent %d times) at index %d",
                transfer.target,
                transfer.elapsed_ticks,
                transfer.timeout_now_sent,
                self.log.last_index,
            )
        if self._quorum_elapsed >= self.config.check_quorum_timeout_ticks:
            self._quorum_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                return False
        if self._heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            for peer in self.progress:
                self._send_heartbeat(peer)
        else:
            self._send_commit_notices()
        return True

    def _send_commit_notices(self) -> None:
        """Tell each follower that has not heard it our new commit index: once a tick.

        A commit sends no message of its own (see :meth:`maybe_commit`): under
        load the next entries carry it, and this bounds how long an idle
        follower applies late (and serves its watches late) to one tick. A
        follower that is probing or receiving a snapshot hears it once caught up.
        """
        commit = self.core.commit_index
        for peer, progress in self.progress.items():
            if progress.commit_sent < commit and progress.state is ProgressState.REPLICATE:
                self._send_append(peer, allow_empty=True)

    def _quorum_active(self) -> bool:
        """Whether a majority of voters (us too, if we vote) answered lately; resets."""
        active = {self.id}
        for peer, progress in self.progress.items():
            if progress.recent_active:
                active.add(peer)
            progress.recent_active = False
        return quorum.is_quorum(self.core.membership.voters, active)

    def sync_members(self) -> None:
        """Track the members of the core's latest configuration: a progress for each new one.

        A new member starts probing just after our last entry (Figure 2); a
        removed one is forgotten, and is sent nothing more.
        """
        members = self.core.membership.members - {self.id}
        for peer in members - self.progress.keys():
            # Raft Figure 2: nextIndex just after the leader's last entry, matchIndex 0.
            self.progress[peer] = Progress(
                match_index=0, next_index=self.log.last_index + 1, max_inflight=self._inflight
            )
            self._to_send[peer] = True
        for peer in self.progress.keys() - members:
            del self.progress[peer]
            self._to_send.pop(peer, None)

    # ----------------------------------------------------------------- sending

    def send_to_all(self, *, allow_empty: bool) -> None:
        """Queue a send to every follower for the next Ready."""
        for peer in self.progress:
            self._to_send[peer] = allow_empty or self._to_send.get(peer, False)

    def flush(self) -> None:
        """Send what was queued since the last Ready: all proposals in few messages.

        Starts a read round first if reads are queued for one, so that this
        flush's messages carry its id, and every follower hears it now.
        """
        started = self._start_read_round()
        if self._to_send:
            to_send, self._to_send = self._to_send, {}
            for peer, allow_empty in to_send.items():
                self._send_append(peer, allow_empty=allow_empty)
        if started:
            for peer in self.progress:
                self._send_read_round(peer)
            self._confirm_reads()  # a cluster of one confirms at once

    def read_round_due(self) -> bool:
        """Whether :meth:`flush` would start a read round; changes nothing.

        One round at a time: the reads asked for while a round is in flight
        queue for the next, which starts once it is confirmed (by the replies
        to its own messages, or to the next heartbeats, which carry its id).
        A round per Ready instead cost, under load, a round of messages to
        every follower and their replies for every few reads
        (benchmarks/results/reads.md).
        """
        return bool(self.reads.queued) and self.term_committed and not self.reads.in_flight

    def _start_read_round(self) -> bool:
        """Give the queued reads a new round at the current commit index; whether one began."""
        if not self.read_round_due():
            return False
        self.core.read_rounds_drawn += 1
        started = self.reads.start_round(self.core.read_rounds_drawn, self.core.commit_index)
        assert started
        self.send_to_all(allow_empty=True)
        return True

    def _send_read_round(self, peer: int) -> None:
        """Make sure ``peer`` was sent the latest round id, if the flush sent it nothing.

        A follower whose pipeline is full got no message from the flush: an
        empty AppendEntries right after what was sent (a heartbeat) carries
        the id without touching the pacing. A follower receiving a snapshot
        gets none; the others make the majority, or its next heartbeat does.
        """
        progress = self.progress[peer]
        if progress.read_sent >= self.reads.last_round or progress.state is ProgressState.SNAPSHOT:
            return
        prev = progress.next_index - 1
        prev_term = self.log.term(prev)
        if prev_term is not None:
            self._send_entries(peer, prev, prev_term, ())

    def _confirm_reads(self) -> None:
        """Hand the core the reads of every round a majority of voters acknowledged."""
        if not self.reads.in_flight:
            return
        confirmed = self._quorum_reached(self.reads.last_round, lambda p: p.read_acked)
        self.core.confirmed_reads(self.reads.confirm(confirmed))

    def _quorum_reached(self, own: int, of_follower: Callable[[Progress], int]) -> int:
        """The largest value that a majority of voters reached, ours being ``own``.

        The one place that counts toward a quorum here: the commit index
        (match indexes) and read rounds (acknowledged round ids) both ask here.
        Only the voters of the latest configuration count (thesis §4.2.1): a
        learner's value is ignored, and so is ``own`` while this leader is not
        a voter (a leader removing itself, §4.2.2, neither commits nor confirms
        a read round by its own vote).
        """
        values = {peer: of_follower(progress) for peer, progress in self.progress.items()}
        values[self.id] = own
        return quorum.voters_commit_index(self.core.membership.voters, values)

    def has_pending_sends(self) -> bool:
        """Whether :meth:`flush` would send anything now; changes nothing.

        The driver asks ``has_ready()`` between inputs; a query that built the
        messages would make what a Ready holds depend on how often it asked.
        """
        return any(
            self._would_send(peer, allow_empty=allow_empty)
            for peer, allow_empty in self._to_send.items()
        )

    def _would_send(self, peer: int, *, allow_empty: bool) -> bool:
        """Whether :meth:`_send_append` would send ``peer`` at least one message now."""
        progress = self.progress[peer]
        if progress.is_paused():
            return False
        # Entries it lacks (or, before our first index, the snapshot), or an
        # empty AppendEntries on request. A new commit index alone is no
        # reason: see maybe_commit.
        return allow_empty or progress.next_index <= self.log.last_index

    def _send_append(self, peer: int, *, allow_empty: bool) -> None:
        """Send ``peer`` what it lacks, as far as its progress state allows."""
        if not self._would_send(peer, allow_empty=allow_empty):
            return  # what has_pending_sends() answered: nothing
        progress = self.progress[peer]
        config, log = self.config, self.log
        sent = False
        while not progress.is_paused():
            if progress.next_index < log.first_index:
                self._send_snapshot(peer)
                return
            entries = log.batch(
                progress.next_index, config.max_entries_per_message, config.max_bytes_per_message
            )
            if not entries and (sent or not allow_empty):
                return
            prev = progress.next_index - 1
            prev_term = log.term(prev)
            assert prev_term is not None, (prev, log.first_index)
            self._send_entries(peer, prev, prev_term, entries)
            sent = True
            progress.sent(entries[-1].index if entries else None)
            if not entries:
                return

    def _send_heartbeat(self, peer: int) -> None:
        progress = self.progress[peer]
        match progress.state:
            case ProgressState.SNAPSHOT:
                # One chunk per acknowledgement: a heartbeat retransmits the chunk in
                # flight only once it went unanswered for STALLED_HEARTBEATS, so a
                # round trip longer than a heartbeat does not send every chunk twice.
                progress.snapshot_heartbeats += 1
                if progress.snapshot_heartbeats >= STALLED_HEARTBEATS:
                    self._send_snapshot(peer)
            case ProgressState.PROBE:
                progress.probe_sent = False  # the last probe may be lost: probe again
                self._send_append(peer, allow_empty=True)
            case ProgressState.REPLICATE:
                if progress.inflight and progress.match_index == progress.match_at_heartbeat:
                    progress.stalled_heartbeats += 1
                else:
                    progress.stalled_heartbeats = 0
                progress.match_at_heartbeat = progress.match_index
                if progress.stalled_heartbeats >= STALLED_HEARTBEATS:
                    # Nothing acknowledged for whole heartbeat intervals while
                    # entries are in flight: assume they or their answers were
                    # lost, and resend from the match on.
                    progress.stalled_heartbeats = 0
                    progress.become_probe(progress.match_index + 1)
                    self._send_append(peer, allow_empty=True)
                    return
                # Empty, right after what was sent: a follower that lost some
                # in-flight message refuses it, which sends us back to probing.
                prev = progress.next_index - 1
                prev_term = self.log.term(prev)
                if prev_term is None:
                    self._send_snapshot(peer)
                    return
                self._send_entries(peer, prev, prev_term, ())

    def _send_entries(
        self, peer: int, prev: int, prev_term: int, entries: tuple[Entry, ...]
    ) -> None:
        """One AppendEntries to ``peer`` (a heartbeat if no entries), with our commit index."""
        commit = self.core.commit_index
        self._send(
            AppendEntries(
                src=self.id,
                dst=peer,
                term=self.term,
                prev_log_index=prev,
                prev_log_term=prev_term,
                entries=entries,
                leader_commit=commit,
                read_round=self.reads.last_round,
            )
        )
        progress = self.progress[peer]
        progress.commit_sent = commit
        progress.read_sent = self.reads.last_round

    def _send_snapshot(self, peer: int) -> None:
        """Send ``peer`` the current chunk of our snapshot (Raft Figure 13, in chunks)."""
        progress = self.progress[peer]
        snapshot = self.core.snapshot
        assert snapshot is not None and snapshot.index == self.log.snapshot_index
        if (
            progress.state is not ProgressState.SNAPSHOT
            or progress.snapshot_index != snapshot.index
        ):
            progress.become_snapshot(snapshot.index)
            self._log(logging.INFO, "sending snapshot at index %d to n%d", snapshot.index, peer)
        offset = progress.snapshot_offset
        progress.snapshot_heartbeats = 0
        framed, checksum = self._framed(snapshot)
        chunk = framed[offset : offset + max(1, self.config.snapshot_chunk_bytes)]
        self._send(
            InstallSnapshot(
                src=self.id,
                dst=peer,
                term=self.term,
                last_included_index=snapshot.index,
                last_included_term=snapshot.term,
                offset=offset,
                data=chunk,
                done=offset + len(chunk) >= len(framed),
                checksum=checksum,
            )
        )

    def _framed(self, snapshot: Snapshot) -> tuple[bytes, int]:
        """``snapshot`` as sent (framed with its configuration) and its CRC32."""
        cached = self._checksummed
        if cached is None or cached[0] is not snapshot:
            # A snapshot taken before any configuration entry: the seed's.
            config = snapshot.config or self.core.config_log.at(snapshot.index)
            framed = membership.frame_snapshot(config, snapshot.data)
            cached = self._checksummed = (snapshot, framed, zlib.crc32(framed))
        return cached[1], cached[2]

    # ----------------------------------------------------------------- replies

    def handle_append_reply(self, msg: AppendEntriesReply) -> None:
        self._handle_append_reply(msg)
        transfer = self.transfer
        if msg.success and transfer is not None and msg.src == transfer.target:
            self.maybe_send_timeout_now()

    def _handle_append_reply(self, msg: AppendEntriesReply) -> None:
        progress = self.progress.get(msg.src)
        if progress is None:
            return  # not (or no longer) a member: we sent it nothing to answer
        progress.recent_active = True
        if progress.read_acked < msg.read_round <= self.reads.last_round:
            # Success or refusal, a reply in our term says it still follows us.
            progress.read_acked = msg.read_round
            self._confirm_reads()
        if msg.success:
            if msg.match_index > self.log.last_index:
                return  # acknowledges entries we never had: nonsense
            if progress.update_match(msg.match_index):
                if progress.state is ProgressState.PROBE or (
                    progress.state is ProgressState.SNAPSHOT
                    and progress.match_index >= self.log.snapshot_index
                ):
                    progress.become_replicate()
                self.maybe_commit()
                self._to_send.setdefault(msg.src, False)
            elif (
                progress.state is ProgressState.PROBE
                and progress.match_index >= progress.next_index - 1
            ):
                # Our probe's answer, from a follower that was already up to date.
                progress.become_replicate()
                self._to_send.setdefault(msg.src, False)
            return
        rejected = msg.match_index  # on a refusal: the prev_log_index refused
        if rejected > self.log.last_index:
            return
        if progress.reject(rejected, self._next_after_conflict(msg)):
            self._log(
                logging.DEBUG,
                "n%d refused index %d; probing at %d",
                msg.src,
                rejected,
                progress.next_index,
            )
            self._to_send[msg.src] = True

    def _next_after_conflict(self, msg: AppendEntriesReply) -> int:
        """Fast backtracking: where the follower's log may match ours, from its hint.

        If we hold entries of the follower's conflicting term, our last one of
        that term is where the logs may agree; otherwise skip the follower's
        whole run of that term (or to its log's end, when it was too short).
        """
        if msg.conflict_term != NO_TERM:
            last = self.log.last_index_of_term(msg.conflict_term)
            if last is not None:
                return last + 1
        return min(msg.conflict_index, self.log.last_index + 1)

    def handle_snapshot_reply(self, msg: InstallSnapshotReply) -> None:
        progress = self.progress.get(msg.src)
        if progress is None:
            return  # not (or no longer) a member
        progress.recent_active = True
        if msg.done:
            if msg.last_included_index > self.log.last_index:
                return
            progress.update_match(msg.last_included_index)
            if progress.state is ProgressState.SNAPSHOT:
                progress.become_probe()
                self._log(
                    logging.INFO,
                    "n%d has the snapshot at index %d",
                    msg.src,
                    msg.last_included_index,
                )
            self.maybe_commit()
            self._to_send[msg.src] = True
            return
        snapshot = self.core.snapshot
        if (
            progress.state is not ProgressState.SNAPSHOT
            or snapshot is None
            or msg.last_included_index != progress.snapshot_index
            or snapshot.index != progress.snapshot_index
            or msg.next_offset == progress.snapshot_offset
        ):
            # Stale, or a duplicate of an answer already acted on; a heartbeat
            # retransmits the current chunk if it stays unanswered (lost).
            return
        progress.snapshot_offset = min(msg.next_offset, len(self._framed(snapshot)[0]))
        self._send_snapshot(msg.src)

    # ---------------------------------------------------------------- transfer

    def start_transfer(self, target: int) -> None:
        """Begin handing leadership to ``target`` (a checked peer); see kvraft.raft.transfer.

        Asked again for the same target, the transfer already under way runs
        on (its timeout is not extended); for another target, that one replaces it.
        """
        running = self.transfer
        if running is not None and running.target == target:
            return
        if running is not None:
            self._log(logging.INFO, "abandoned transfer to n%d for n%d", running.target, target)
        self.transfer = Transfer(target, self.config.election_timeout_ticks)
        self._log(
            logging.INFO,
            "transferring leadership to n%d at index %d (its match %d)",
            target,
            self.log.last_index,
            self.progress[target].match_index,
        )
        if not self.maybe_send_timeout_now():
            self._to_send[target] = True  # catch it up now, not at the next heartbeat

    def maybe_send_timeout_now(self) -> bool:
        """Send the target TimeoutNow if it holds our whole log; whether it was sent.

        Thesis §3.10: the target campaigns at once, and with our log it wins
        any voter we could win. Our log no longer grows (the core takes no
        proposal meanwhile), so a caught-up target stays caught up.
        """
        transfer = self.transfer
        if transfer is None:
            return False
        target = self.progress.get(transfer.target)
        if target is None or target.match_index != self.log.last_index:
            return False
        self._send(TimeoutNow(src=self.id, dst=transfer.target, term=self.term))
        transfer.timeout_now_sent += 1
        if transfer.timeout_now_sent == 1:
            self._log(
                logging.INFO,
                "n%d caught up to index %d: sent TimeoutNow",
                transfer.target,
                self.log.last_index,
            )
        return True

    def _log(self, level: int, event: str, *args: object) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, "n%d [term %d] " + event, self.id, self.term, *args)

    # ------------------------------------------------------------------ commit

    def maybe_commit(self) -> None:
        """Advance the core's commit index to what a majority holds, if of this term."""
        # The leader's own vote counts only the entries it has persisted (and
        # only while it is a voter: see _quorum_reached).
        index = self._quorum_reached(self.log.persisted, lambda p: p.match_index)
        # Raft §5.4.2: only an entry of the current term is committed by counting
        # replicas; earlier ones are committed indirectly, by the Log Matching property.
        if index > self.core.commit_index and self.log.term(index) == self.term:
            # No message of its own: each follower hears of it with the next one it
            # is sent anyway, the next entries, or at the next tick (see
            # _send_commit_notices). Clients wait only for the leader's apply;
            # answering each acknowledgement with the new commit index alone
            # doubled the AppendEntries of a sequential put and their
            # acknowledgements, and cost each follower a second wake-up per put
            # (benchmarks/results/profile.md).
            self.core.commit_index = index
            if not self.term_committed:
                self.term_committed = True
                self.reads.own_term_committed()
