"""RaftCore: terms and roles, the decisions of elections, and the Ready handshake.

The core decides what a node is: when it campaigns, follows or leads, which
term it is in, whom it votes for (with the lease check-quorum gives a live
leader), and what goes into each Ready. What a node does in each role lives
beside it: :mod:`~kvraft.raft.election` (the election timer, a candidate's
round of votes), :mod:`~kvraft.raft.follower` (the follower's side of
replication), :mod:`~kvraft.raft.leader` (the leader's side, read-index
rounds included; their rules are :mod:`~kvraft.raft.read_index`'s). See the package
docstring (:mod:`kvraft.raft`) for the theory of operation and the layering.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

from kvraft.raft import membership, quorum
from kvraft.raft.config import RaftConfig
from kvraft.raft.election import Election, ElectionTimer
from kvraft.raft.follower import Follower
from kvraft.raft.leader import Leader
from kvraft.raft.log import RaftLog
from kvraft.raft.membership import (
    MAX_MEMBER_ID,
    Change,
    ChangeKind,
    ChangeRefused,
    ConfigLog,
    Membership,
)
from kvraft.raft.messages import (
    MAX_RAFT_INT,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from kvraft.raft.read_index import ReadState
from kvraft.raft.ready import HardState, PersistentState, Ready, Snapshot
from kvraft.raft.transfer import TransferRefused, check_target
from kvraft.raft.validate import well_formed

logger = logging.getLogger("kvraft.raft")


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class RaftCore:
    """One Raft peer's consensus state; see the module docstring.

    Public attributes are read-only for callers. ``step`` never raises on
    network input: stale, duplicated, reordered, misaddressed or nonsensical
    messages are ignored. Misuse of the local API (compacting past what was
    applied, proposing something other than bytes) raises at once.
    """

    def __init__(self, config: RaftConfig, state: PersistentState) -> None:
        self.config = config
        self.id = config.node_id
        hard = state.hard_state
        if hard.voted_for is not None and not 0 <= hard.voted_for <= MAX_MEMBER_ID:
            raise ValueError(f"n{self.id}: persisted vote for n{hard.voted_for}, not a node id")
        snapshot = state.snapshot
        self.log = RaftLog(
            snapshot.index if snapshot is not None else 0,
            snapshot.term if snapshot is not None else 0,
            state.entries,
        )
        # The configurations in the log over the one at the snapshot (or the
        # seed from --peers, while no leader has written one): thesis §4.1.
        seed = Membership.of_voters(config.peers, dict(config.seed_addresses))
        self.config_log = ConfigLog(
            snapshot.config if snapshot is not None and snapshot.config is not None else seed,
            self.log.snapshot_index,
            state.entries,
        )
        # The latest snapshot: as loaded, taken by compact(), or installed from a leader.
        # Invariant: snapshot.index == log.snapshot_index.
        self.snapshot = snapshot
        self.current_term = hard.current_term
        self.voted_for = hard.voted_for
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        # Invariant: snapshot index <= applying_index <= commit_index <= last_index.
        # The persisted commit index is a hint that may trail the snapshot (it is
        # written only along with other writes); past the log it is an anomaly.
        self.commit_index = min(
            max(hard.commit_index, self.log.snapshot_index), self.log.last_index
        )
        if hard.commit_index > self.log.last_index:
            logger.warning(
                "n%d persisted commit index %d outside the persisted log %d..%d; using %d",
                self.id,
                hard.commit_index,
                self.log.snapshot_index,
                self.log.last_index,
                self.commit_index,
            )
        # The last index handed out in Ready.committed for the driver to apply (or
        # the snapshot's index): what the state machine will have applied once the
        # driver performed the Readies taken so far. Not the paper's lastApplied,
        # which is the state machine's own and which the core never sees; etcd
        # raft calls this position "applying".
        self.applying_index = self.log.snapshot_index
        # The hard state last handed out in a Ready (or loaded).
        self._hard_state = HardState(self.current_term, self.voted_for, self.commit_index)
        self._messages: list[Message] = []
        self._pending_snapshot: Snapshot | None = None  # installed, not yet handed out
        self._follower = Follower(self, self._send, self._install_snapshot)
        self.leader: Leader | None = None  # while role is LEADER
        self._election: Election | None = None  # while role is PRE_CANDIDATE or CANDIDATE
        self._timer = ElectionTimer(config.election_timeout_ticks, config.rng)
        # Read-index reads (kvraft.raft.read_index). The last round id drawn: one
        # counter for the core's whole life, across its terms of leadership (rule 4).
        self.read_rounds_drawn = 0
        self._read_states: list[ReadState] = []  # confirmed, not yet handed out
        self._failed_reads: list[int] = []  # failed by a step-down, not yet handed out

    # ------------------------------------------------------------------ reading

    @property
    def membership(self) -> Membership:
        """The configuration in force: the latest in the log, committed or not (thesis §4.1)."""
        return self.config_log.latest

    @property
    def peers(self) -> tuple[int, ...]:
        """Every member of the latest configuration, voters and learners, this node included."""
        return tuple(sorted(self.config_log.latest.members))

    def config_at(self, index: int) -> Membership:
        """The configuration as of log ``index`` (what a snapshot taken there must carry)."""
        return self.config_log.at(index)

    @property
    def is_voter(self) -> bool:
        return self.config_log.latest.is_voter(self.id)

    @property
    def first_index(self) -> int:
        return self.log.first_index

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def last_term(self) -> int:
        return self.log.last_term

    def entry(self, index: int) -> Entry | None:
        """The entry at ``index`` if still in the log (None if compacted or beyond the end)."""
        return self.log.entry(index)

    def term(self, index: int) -> int | None:
        """The term at ``index``: of an entry in the log, or of the snapshot at its index."""
        return self.log.term(index)

    def status(self) -> dict[str, object]:
        return {
            "id": self.id,
            "role": self.role.value,
            "term": self.current_term,
            "leader_id": self.leader_id,
            "commit_index": self.commit_index,
            # Under this name for `kvraft status`: the driver applies a Ready's
            # entries right after persisting it, so this runs ahead of what the
            # state machine applied only while a Ready is being performed.
            "applied_index": self.applying_index,
            "first_index": self.log.first_index,
            "last_index": self.log.last_index,
            "snapshot_index": self.log.snapshot_index,
            "voters": sorted(self.membership.voters),
            "learners": sorted(self.membership.learners),
        }

    # ------------------------------------------------------------ local inputs

    def tick(self) -> None:
        """One unit of logical time: the election timer, or heartbeats and check-quorum."""
        if self.leader is not None:
            if not self.leader.tick():
                # Thesis §6.2: a leader cut off from a majority stops acting as one.
                self._log(
                    logging.INFO,
                    "stepping down: heard from no quorum in %d ticks",
                    self.config.check_quorum_timeout_ticks,
                )
                self._become_follower(self.current_term, None)
            return
        if self._timer.tick():
            if self.is_voter:
                self._start_election(pre_vote=self.config.pre_vote)
            else:
                # A learner, a node still joining, or one removed: never campaigns
                # (thesis §4.2.1, §4.2.3). It waits for a leader, or for nothing.
                self._timer.start()
        elif (
            self._election is not None
            and self._timer.elapsed % self.config.heartbeat_interval_ticks == 0
        ):
            # Votes travel as one-way messages: on a lossy network a single round
            # rarely reaches a majority and back, so ask the silent peers again
            # (same term, same log position: a repeated grant changes nothing).
            self._election.request_votes()

    def propose(self, command: bytes) -> tuple[int, int] | None:
        """Append ``command`` if leader: ``(index, term)``; None if not leader.

        The entry is sent at the next :meth:`ready`, together with every other
        proposal made since the previous one (batching). None too while a
        leadership transfer is in progress (thesis §3.10): the caller answers
        as if not leader, and its client retries at the new leader.
        """
        if not isinstance(command, bytes):
            raise TypeError(f"a command is bytes, not {type(command).__name__}")
        if self.leader is None:
            return None
        if self.leader.transfer is not None:
            return None
        if self.log.last_index >= MAX_RAFT_INT:
            # Indexes past the bound are refused by every peer and by storage.
            self._log(logging.ERROR, "refusing a proposal: index %d at the bound", MAX_RAFT_INT)
            return None
        if membership.is_config_command(command):
            raise ValueError("a configuration is proposed with propose_change, not as a command")
        entry = Entry(term=self.current_term, index=self.log.last_index + 1, command=command)
        self.log.append(entry)
        self.leader.send_to_all(allow_empty=False)
        return entry.index, entry.term

    def read_index(self, request_id: int) -> bool:
        """Ask for a linearizable read without a log entry; False (nothing held) if not leader.

        Raft thesis §6.4 (see :mod:`kvraft.raft.read_index` for the rules): a
        later Ready hands out ``ReadState(request_id, index)`` once a majority
        confirmed this node still led after the request; the driver answers
        from its state machine once it has applied ``index``. If the node
        stops leading first, a Ready lists ``request_id`` in ``failed_reads``.
        ``request_id`` is the driver's, unique among its pending reads.
        """
        if self.leader is None:
            return False
        self.leader.reads.ask(request_id, own_term_committed=self.leader.term_committed)
        return True

    @property
    def pending_reads(self) -> int:
        """Read-index reads this leader holds and has not yet handed out (0 if not leader)."""
        return len(self.leader.reads) if self.leader is not None else 0

    def confirmed_reads(self, reads: list[ReadState]) -> None:
        """The leader's: ``reads`` were confirmed; the next Ready hands them out."""
        self._read_states.extend(reads)

    def propose_change(self, change: Change) -> tuple[int, int]:
        """As leader, append the configuration ``change`` makes: ``(index, term)``.

        Thesis §4.1's rules: only once an entry of this leader's term has
        committed (so no change of a previous leader is still in flight), only
        when no earlier change is uncommitted, one server at a time; and a
        learner is promoted only within ``max_promotion_lag_entries`` of our
        last index. The new configuration is in force at once, on this node
        when appended and on each follower when it appends it. Raises
        :class:`~kvraft.raft.membership.ChangeRefused` saying why, changing
        nothing.
        """
        leader = self.leader
        if leader is None:
            known = f" (n{self.leader_id} is)" if self.leader_id is not None else ""
            raise ChangeRefused(f"n{self.id} is not the leader{known}")
        if leader.transfer is not None:
            raise ChangeRefused(
                f"n{self.id} is transferring leadership to n{leader.transfer.target}"
            )
        if self.log.term(self.commit_index) != self.current_term:
            raise ChangeRefused(
                f"n{self.id} has not committed an entry of its term {self.current_term} yet"
            )
        if self.config_log.latest_index > self.commit_index:
            raise ChangeRefused(
                f"the change at index {self.config_log.latest_index} is not committed yet"
                f" (commit index {self.commit_index}): one change at a time"
            )
        if change.kind is ChangeKind.PROMOTE and change.node_id in leader.progress:
            lag = self.log.last_index - leader.progress[change.node_id].match_index
            bound = self.config.max_promotion_lag_entries
            if lag > bound:
                raise ChangeRefused(
                    f"n{change.node_id} is {lag} entries behind the leader"
                    f" (a learner is promoted within {bound}); let it catch up"
                )
        if self.log.last_index >= MAX_RAFT_INT:
            raise ChangeRefused(f"index {MAX_RAFT_INT} reached")
        new = self.membership.apply(change)
        index = self._append_config(new)
        self._log(
            logging.INFO,
            "proposed configuration %s at index %d (%s n%d)",
            new.describe(),
            index,
            change.kind.value,
            change.node_id,
        )
        return index, self.current_term

    def _append_config(self, config: Membership) -> int:
        """As leader: append ``config`` as an entry; it is in force from now on."""
        assert self.leader is not None
        entry = Entry(
            term=self.current_term, index=self.log.last_index + 1, command=membership.encode(config)
        )
        self.log.append(entry)
        self.config_log.add((entry,))
        self.leader.sync_members()
        self.leader.send_to_all(allow_empty=False)
        return entry.index

    def transfer_leadership(self, target: int) -> None:
        """As leader, hand leadership to peer ``target`` (Raft thesis §3.10).

        Proposals are refused from now on until ``target`` wins (this node then
        follows it) or one election timeout passes (the transfer is
        abandoned, proposals are taken again); the target is caught up first,
        then sent TimeoutNow. See :mod:`kvraft.raft.transfer`. Raises
        :class:`~kvraft.raft.transfer.TransferRefused`, changing nothing, when
        not leader or for a target that is this node or not a peer.
        """
        if self.leader is None:
            leader = f" (n{self.leader_id} is)" if self.leader_id is not None else ""
            raise TransferRefused(f"n{self.id} is not the leader{leader}")
        self.leader.start_transfer(check_target(self.id, self.membership.voters, target))

    @property
    def transfer_target(self) -> int | None:
        """The peer a leadership transfer in progress hands over to; None if none runs."""
        if self.leader is None or self.leader.transfer is None:
            return None
        return self.leader.transfer.target

    def campaign(self) -> None:
        """Start an election now (with a pre-vote first if configured); no-op for a leader.

        A no-op too for a node that is not a voter of its latest configuration.
        """
        if self.role is not Role.LEADER and self.is_voter:
            self._start_election(pre_vote=self.config.pre_vote)

    def compact(self, snapshot: Snapshot) -> None:
        """The application snapshotted at ``snapshot.index``: drop the log up to there.

        A snapshot at or below the one already held is ignored (a leader's
        snapshot may have been installed since the application took it).
        """
        if snapshot.index <= self.log.snapshot_index:
            return
        if snapshot.index > self.applying_index:
            raise ValueError(
                f"n{self.id}: snapshot at {snapshot.index} is past applied {self.applying_index}"
            )
        if self.log.term(snapshot.index) != snapshot.term:
            raise ValueError(
                f"n{self.id}: snapshot term {snapshot.term} at {snapshot.index} "
                f"disagrees with the log's {self.log.term(snapshot.index)}"
            )
        config = self.config_log.at(snapshot.index)
        if snapshot.config is None:
            snapshot = dataclasses.replace(snapshot, config=config)
        elif not snapshot.config.same_as(config):
            raise ValueError(
                f"n{self.id}: snapshot at {snapshot.index} carries {snapshot.config.describe()},"
                f" the log's is {config.describe()}"
            )
        self.log.compact(snapshot.index, snapshot.term)
        self.config_log.compact(snapshot.index)
        self.snapshot = snapshot
        self._log(logging.DEBUG, "compacted log up to index %d", snapshot.index)

    # ------------------------------------------------------------ Ready handshake

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would hand out anything; a pure query (changes nothing).

        True exactly when the Ready would hold a hard state, entries, a
        snapshot, messages or committed entries: the leader's queued sends are
        asked whether they would produce a message, not turned into messages.
        """
        hard = self._hard_state
        return bool(
            self._messages
            or (
                self.leader is not None
                and (self.leader.has_pending_sends() or self.leader.read_round_due())
            )
            or self._read_states
            or self._failed_reads
            or self._pending_snapshot is not None
            or self.log.unstable <= self.log.last_index
            or self.commit_index > self.applying_index
            or hard.current_term != self.current_term
            or hard.voted_for != self.voted_for
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply since the last Ready (see kvraft.raft.ready)."""
        if self.leader is not None:
            self.leader.flush()
        ready = Ready()
        hard = HardState(self.current_term, self.voted_for, self.commit_index)
        persisted = self._hard_state
        # Thesis §10.2.1 (see Ready.send_before_persist): a leader's messages depend
        # only on its term and vote, which must already be on disk.
        ready.send_before_persist = (
            self.role is Role.LEADER
            and hard.current_term == persisted.current_term
            and hard.voted_for == persisted.voted_for
        )
        writes_log = self._pending_snapshot is not None or self.log.unstable <= self.log.last_index
        if hard != persisted and (
            writes_log
            or hard.current_term != persisted.current_term
            or hard.voted_for != persisted.voted_for
        ):
            # The commit index alone is no reason to write: it is a hint for a
            # restart (which learns the rest from a leader), and waiting for its
            # fsync before applying would put a third fsync on every commit's path.
            # It goes along with the next write. commit_index <= last_index, and
            # this Ready persists the whole log up to last_index: the persisted
            # commit never exceeds the persisted log.
            ready.hard_state = self._hard_state = hard
        if self._pending_snapshot is not None:
            # The stored log is replaced by the snapshot followed by exactly these.
            ready.snapshot = self._pending_snapshot
            ready.entries = self.log.all_entries()
            self._pending_snapshot = None
        else:
            ready.entries = self.log.unstable_entries()
        self.log.mark_handed_out()
        ready.messages, self._messages = self._messages, []
        ready.reads, self._read_states = self._read_states, []
        ready.failed_reads, self._failed_reads = self._failed_reads, []
        if self.commit_index > self.applying_index:
            # Persisted earlier or by this very Ready (it holds every unstable entry).
            ready.committed = self.log.between(self.applying_index + 1, self.commit_index)
            self.applying_index = self.commit_index
        return ready

    def take_messages(self) -> list[Message]:
        """A leader's pending messages, now, without the rest of a Ready (which stays pending).

        For a driver still persisting an earlier Ready: a leader's messages
        promise nothing about its own disk once its term and vote are on it
        (see ``Ready.send_before_persist``; Raft thesis §10.2.1), so its
        heartbeats may leave on time through a slow fsync instead of waiting
        behind it, and its followers' election timers stay quiet. Only the
        driver knows whether the term and vote are persisted: it must call
        this only then, and only while the core leads.
        """
        assert self.leader is not None, f"n{self.id}: take_messages() while not leading"
        self.leader.flush()
        messages, self._messages = self._messages, []
        return messages

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied ``ready``."""
        if ready.entries:
            self.log.stable_to(ready.entries)
        if self.leader is not None:
            # The leader's own vote toward commit counts only persisted entries.
            self.leader.maybe_commit()
            self._maybe_leave_leadership()

    def _maybe_leave_leadership(self) -> None:
        """Thesis §4.2.2: a leader removed from the configuration steps down once that commits.

        Until then it leads (and replicates) a configuration it is no part of,
        not counting itself; after, it never campaigns again (not a voter).
        """
        if (
            self.leader is not None
            and not self.is_voter
            and self.commit_index >= self.config_log.latest_index
        ):
            self._log(
                logging.INFO,
                "stepping down: removed from the configuration (%s) committed at index %d",
                self.membership.describe(),
                self.config_log.latest_index,
            )
            self._become_follower(self.current_term, None)

    # ----------------------------------------------------------------- messages

    def step(self, msg: Message) -> None:
        """React to one message from the network; never raises on its contents."""
        if not well_formed(msg, self.id):
            logger.debug("n%d ignored a malformed or misaddressed %r", self.id, msg)
            return
        if not self._from_member(msg):
            logger.debug(
                "n%d ignored %s from n%d, not a member", self.id, type(msg).__name__, msg.src
            )
            return
        if msg.term > self.current_term:
            if not self._step_higher_term(msg):
                return
        elif msg.term < self.current_term:
            self._step_lower_term(msg)
            return
        match msg:
            case RequestVote():
                self._handle_request_vote(msg)
            case RequestVoteReply():
                self._handle_vote_reply(msg)
            case AppendEntries():
                self._handle_append_entries(msg)
            case AppendEntriesReply():
                if self.leader is not None:
                    self.leader.handle_append_reply(msg)
            case InstallSnapshot():
                self._handle_install_snapshot(msg)
            case InstallSnapshotReply():
                if self.leader is not None:
                    self.leader.handle_snapshot_reply(msg)
            case TimeoutNow():
                self._handle_timeout_now(msg)
        if self.leader is not None:
            self._maybe_leave_leadership()

    def _from_member(self, msg: Message) -> bool:
        """Whether to hear ``msg`` at all: a removed node must not disturb the cluster.

        A leader's messages (AppendEntries, InstallSnapshot, TimeoutNow) are
        heard from anyone: a leader of a configuration we have not caught up
        with yet may be one we do not know of (thesis §4.1: servers accept
        AppendEntries from leaders outside their configuration), and it was
        elected by a majority. Everything else only from members of our latest
        configuration: vote requests of a removed node (which never learned of
        its removal and campaigns) are ignored before their term is looked at,
        so it cannot depose the leader or bump anyone's term.
        """
        if isinstance(msg, AppendEntries | InstallSnapshot | TimeoutNow):
            return True
        config = self.membership
        if not config.is_member(self.id):
            # Joining (we know no configuration yet) or removed: a vote we grant
            # may be what a configuration we have not seen needs to elect a
            # leader (thesis §4.1: votes are granted without consulting the
            # configuration), and we disturb no one by answering.
            return True
        if isinstance(msg, RequestVote):
            return config.is_voter(msg.src)
        return config.is_member(msg.src)

    def _step_higher_term(self, msg: Message) -> bool:
        """A message from a later term; False if it must be ignored altogether."""
        match msg:
            case RequestVote():
                if self._is_transfer_vote(msg):
                    # Our own transfer's target campaigns (kvraft.raft.transfer, rule 4):
                    # step down and vote as any follower would.
                    self._log(
                        logging.INFO,
                        "stepping down for transfer target n%d campaigning at term %d",
                        msg.src,
                        msg.term,
                    )
                elif self._in_lease():
                    # Thesis §6.2/§9.6: we heard from a leader within the election
                    # timeout, so this candidate would only disrupt a healthy
                    # leader (it is probably a partitioned node coming back).
                    self._log(
                        logging.DEBUG,
                        "ignored %s from n%d at term %d: leader n%s is alive",
                        "pre-vote" if msg.pre_vote else "vote request",
                        msg.src,
                        msg.term,
                        self.leader_id,
                    )
                    return False
                if msg.pre_vote:
                    return True  # a pre-vote never changes our term
            case RequestVoteReply(pre_vote=True, vote_granted=True):
                return True  # carries the term we would campaign at
        leader = msg.src if isinstance(msg, AppendEntries | InstallSnapshot) else None
        self._become_follower(msg.term, leader)
        return True

    def _step_lower_term(self, msg: Message) -> None:
        """A message from an earlier term: tell its sender our term (Raft §5.1)."""
        match msg:
            case AppendEntries():
                self._follower.refuse_append(msg)
            case InstallSnapshot():
                self._follower.refuse_snapshot(msg)
            case RequestVote():
                self._send(
                    RequestVoteReply(
                        src=self.id,
                        dst=msg.src,
                        term=self.current_term,
                        vote_granted=False,
                        pre_vote=msg.pre_vote,
                    )
                )
            case _:
                pass  # stale replies: whatever they answered is moot

    # ---------------------------------------------------------------- elections

    def _in_lease(self) -> bool:
        """Whether we heard from a live leader within the election timeout (check-quorum)."""
        if not self.config.check_quorum:
            return False
        if self.leader is not None:
            return True  # a leader steps down the moment its lease lapses
        return self.leader_id is not None and self._timer.within_timeout()

    def _is_transfer_vote(self, msg: RequestVote) -> bool:
        """Whether ``msg`` is the vote request of the target of our transfer in progress."""
        return not msg.pre_vote and self.transfer_target == msg.src

    def _start_election(self, *, pre_vote: bool) -> None:
        if self.current_term >= MAX_RAFT_INT or self.log.last_index >= MAX_RAFT_INT:
            # A campaign (or a pre-vote, which asks at term + 1) would pass the
            # bound every peer refuses on the wire and storage refuses to
            # write (MAX_RAFT_INT), and so would a winner's no-op at
            # last_index + 1. Refusing here keeps the node a follower whose
            # store stays valid: it still follows and votes for a leader at
            # this term, and a restart finds the same valid state (no crash
            # loop). Only reachable by 2^62 elections or entries, or a term
            # forced on the cluster from outside.
            self._log(
                logging.ERROR,
                "refusing to campaign: term %d or last index %d is at the bound %d",
                self.current_term,
                self.log.last_index,
                MAX_RAFT_INT,
            )
            self._become_follower(self.current_term, None)  # leave any candidacy
            return
        if not self.is_voter:
            return  # learners, joining and removed nodes never campaign (thesis §4.2.1)
        self._timer.start()
        self._drop_leader()
        self.leader_id = None
        if pre_vote:
            # Thesis §9.6: ask first whether we could win, without bumping the
            # term, so a node that cannot win never disrupts the cluster.
            self.role = Role.PRE_CANDIDATE
            self._log(logging.INFO, "starting pre-vote at index %d", self.log.last_index)
        else:
            self.role = Role.CANDIDATE
            self.current_term += 1
            self.voted_for = self.id
            self._log(logging.INFO, "starting election at index %d", self.log.last_index)
        self._election = Election(self, self._send, pre_vote=pre_vote)
        if self._election.result() is quorum.VoteResult.WON:
            self._won_election(pre_vote=pre_vote)  # a cluster of one
            return
        self._election.request_votes()

    def _can_grant_vote(self, msg: RequestVote) -> bool:
        """Raft §5.2 (one vote per term, first come) and §5.4.1 (up-to-date log)."""
        can_vote = (
            self.voted_for == msg.src
            or (self.voted_for is None and self.leader_id is None)
            # A pre-vote for a later term commits us to nothing.
            or (msg.pre_vote and msg.term > self.current_term)
        )
        up_to_date = (msg.last_log_term, msg.last_log_index) >= (
            self.log.last_term,
            self.log.last_index,
        )
        return can_vote and up_to_date

    def _handle_request_vote(self, msg: RequestVote) -> None:
        granted = self._can_grant_vote(msg)
        if granted and not msg.pre_vote:
            self.voted_for = msg.src  # persisted by the Ready that carries the reply
            self._timer.restart()
            self._log(logging.DEBUG, "voted for n%d", msg.src)
        self._send(
            RequestVoteReply(
                src=self.id,
                dst=msg.src,
                # A grant answers in the candidate's term (a pre-vote's may be ahead
                # of ours); a refusal in ours, so a stale candidate learns of it.
                term=msg.term if granted else self.current_term,
                vote_granted=granted,
                pre_vote=msg.pre_vote,
            )
        )

    def _handle_vote_reply(self, msg: RequestVoteReply) -> None:
        election = self._election
        if election is None:
            return
        result = election.count(msg)
        if result is quorum.VoteResult.WON:
            self._won_election(pre_vote=msg.pre_vote)
        elif result is quorum.VoteResult.LOST:
            self._log(
                logging.INFO,
                "lost %s: %d of %d voters refused",
                "pre-vote" if msg.pre_vote else "election",
                election.refusals(),
                len(self.membership.voters),
            )
            self._become_follower(self.current_term, None)

    def _won_election(self, *, pre_vote: bool) -> None:
        if pre_vote:
            self._start_election(pre_vote=False)
        else:
            self._become_leader()

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term != self.current_term:
            self.current_term = term
            self.voted_for = None
        was = self.role
        self.role = Role.FOLLOWER
        self._drop_leader()
        self._election = None
        self._timer.start()
        self.leader_id = None
        if leader is not None:
            self._set_leader(leader)
        elif was is not Role.FOLLOWER:
            self._log(logging.INFO, "became follower")

    def _drop_leader(self) -> None:
        """No longer leading: the reads held fail (read_index rule 5), confirmed ones stand.

        A read already confirmed was confirmed while this node led, at an
        index it had committed: its answer is still linearizable.
        """
        if self.leader is not None:
            failed = self.leader.reads.take_all()
            if failed:
                self._failed_reads.extend(failed)
                self._log(logging.DEBUG, "failed %d pending reads on stepping down", len(failed))
            self.leader = None

    def _set_leader(self, leader: int) -> None:
        if self.leader_id != leader:
            self.leader_id = leader
            self._log(logging.INFO, "became follower of n%d", leader)

    def _follow(self, leader: int) -> None:
        """A message from the leader of our term: follow it and restart the election timer."""
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.current_term, leader)
        else:
            self._set_leader(leader)
        self._timer.restart()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._election = None
        self.leader = Leader(self, self._send)
        # Raft §8 / thesis §6.4: a no-op of the new term lets the leader commit
        # the entries of earlier terms it holds (§5.4.2 forbids counting them).
        noop = Entry(term=self.current_term, index=self.log.last_index + 1, command=None)
        self.log.append(noop)
        self._log(logging.INFO, "became leader at index %d", noop.index)
        self.leader.send_to_all(allow_empty=True)

    def _handle_timeout_now(self, msg: TimeoutNow) -> None:
        """The receiving half of leadership transfer (see TimeoutNow): campaign now.

        Only on our own leader's word: anyone else could depose a healthy leader.
        No pre-vote: the leader asked, so the election is wanted.
        """
        if self.role is Role.FOLLOWER and msg.src == self.leader_id and self.is_voter:
            self._log(logging.INFO, "asked by leader n%d to campaign now", msg.src)
            self._start_election(pre_vote=False)

    # ------------------------------------------------------ follower: replication

    def _handle_append_entries(self, msg: AppendEntries) -> None:
        if self._follows(msg):
            self._follower.handle_append_entries(msg)

    def _handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        if self._follows(msg):
            self._follower.handle_install_snapshot(msg)

    def _follows(self, msg: AppendEntries | InstallSnapshot) -> bool:
        """Whether ``msg``, from a leader of our term, is ours to follow (and follow it).

        A leader never follows another leader of its own term: at most one is
        elected per term (§5.2), so such a message is a bug or a forgery.
        """
        if self.role is Role.LEADER:
            self._log(
                logging.WARNING,
                "ignored %s from n%d claiming the same term",
                type(msg).__name__,
                msg.src,
            )
            return False
        self._follow(msg.src)
        return True

    def _install_snapshot(self, snapshot: Snapshot, leader: int) -> None:
        """Raft §7: the snapshot replaces the log up to its index (keep a matching suffix)."""
        kept = self.log.install(snapshot.index, snapshot.term)
        self.config_log.reset(
            snapshot.config if snapshot.config is not None else self.config_log.at(snapshot.index),
            snapshot.index,
            self.log.all_entries(),
        )
        self.snapshot = snapshot
        self._pending_snapshot = snapshot
        # The snapshot is of committed state, newer than ours (checked by the caller).
        self.commit_index = snapshot.index
        self.applying_index = snapshot.index
        self._log(
            logging.INFO,
            "installed snapshot at index %d from n%d, kept %d entries",
            snapshot.index,
            leader,
            kept,
        )

    def _send(self, msg: Message) -> None:
        self._messages.append(msg)

    def _log(self, level: int, event: str, *args: object) -> None:
        """One operator log line per event: ``n2 [term 7] became leader at index 1042``."""
        if logger.isEnabledFor(level):
            logger.log(level, "n%d [term %d] " + event, self.id, self.current_term, *args)
