"""The cluster's configuration (voters, learners, their addresses) and its place in the log.

Raft thesis §4.1, single-server changes. A configuration is an ordinary log
entry whose command is :func:`encode`'s bytes: the whole new configuration,
not a delta, so the latest one in the log is all a node needs. The rules,
and where each is enforced:

1. A server uses the latest configuration in its log, committed or not
   (:class:`ConfigLog` ``latest``); a truncation that removes a configuration
   entry reverts to the one before it (``ConfigLog.sync``).
2. A leader proposes a change only once an entry of its own term has
   committed, and only when no earlier change is uncommitted (at most one in
   flight), and each change adds or removes one voter (``RaftCore.propose_change``
   with :func:`check_change`).
3. Learners receive entries and snapshots but do not vote, are not counted for
   commit or check-quorum and never campaign (``voters`` is the only set
   :mod:`~kvraft.raft.quorum` is given).
4. A snapshot carries the configuration as of its index (``Snapshot.config``),
   so compaction never loses it.

The seed (``RaftConfig.peers``) is in force only until the log (or a
snapshot) holds a configuration, which is then the authority. A server takes
it from its data dir, where it was written once at creation (the voters
``--peers`` named at bootstrap, nobody for a node made to join): a restart's
``--peers`` only says how to reach members, never who they are.

A configuration entry's command starts with the byte 0xC1, which msgpack never
uses, so it can never be mistaken for (or forged as) a state machine command,
whose bytes are always a msgpack value: the state machine skips it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kvraft.raft.messages import Entry

# 0xC1 is "never used" in msgpack: no state machine command starts with it.
CONFIG_MAGIC = b"\xc1kvraft-config\x00"
# Written bounds (every input has one). Members of one configuration: etcd
# advises at most 7 voters; 64 leaves room for learners, and bounds the work
# of every quorum computation and the size of the entry.
MAX_MEMBERS = 64
# Peer ids are small non-negative integers.
MAX_MEMBER_ID = 2**31 - 1
# An advertised address, HOST:PORT: a DNS name is at most 253 bytes.
MAX_ADDRESS_CHARS = 300
# Ids removed from the cluster, which may never be added again (see
# Membership.retired): 1,024 replacements of a member is decades of operation
# for a cluster of a few nodes; past it a removal is refused (say so, do not
# silently forget an id).
MAX_RETIRED = 1024
# An encoded configuration: MAX_MEMBERS addresses and ids and MAX_RETIRED ids,
# with room to spare.
MAX_CONFIG_BYTES = 64 * 1024


class ChangeRefused(Exception):
    """A membership change that may not be proposed now; says why. Nothing changed.

    A local error of the caller's (an operator's request), raised at once.
    """


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    ADD_VOTER = "add_voter"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class Change:
    """One single-server change: ``kind`` applied to member ``node_id``."""

    kind: ChangeKind
    node_id: int
    address: str = ""  # for the additions: the address the new member advertises


@dataclass(frozen=True, slots=True)
class Membership:
    """One configuration: who votes, who learns, and the address each advertises.

    Invariant: ``voters``, ``learners`` and ``retired`` are disjoint;
    ``addresses`` names only members ("" when a member's address is not known,
    e.g. a seed from ids alone).

    ``retired``: every id removed from the cluster so far, carried by every
    later configuration (and so by snapshots). An id that voted and comes back
    on an empty disk would answer a vote request as if it had never voted nor
    logged anything, and a member still holding an old configuration in which
    that id votes could be elected without the committed entries (the
    membership simulator found exactly that). So an id once removed is never
    added again: a replacement gets a new id, as etcd gives every added member
    a new one.
    """

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    addresses: Mapping[int, str] = field(default_factory=dict, compare=False, hash=False)
    retired: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(
                f"members both voter and learner: {sorted(self.voters & self.learners)}"
            )
        if len(self.voters) + len(self.learners) > MAX_MEMBERS:
            raise ValueError(f"more than {MAX_MEMBERS} members")
        if self.retired & self.members:
            raise ValueError(f"retired ids that are members: {sorted(self.retired & self.members)}")
        if len(self.retired) > MAX_RETIRED:
            raise ValueError(f"more than {MAX_RETIRED} retired ids")
        for node in self.members | self.retired:
            if not isinstance(node, int) or isinstance(node, bool):
                raise ValueError(f"a member id is an int, not {node!r}")
            if not 0 <= node <= MAX_MEMBER_ID:
                raise ValueError(f"member id {node} outside 0..{MAX_MEMBER_ID}")
        for node, address in self.addresses.items():
            if node not in self.members:
                raise ValueError(f"an address for n{node}, which is not a member")
            if not isinstance(address, str) or len(address) > MAX_ADDRESS_CHARS:
                raise ValueError(f"n{node}: an address is a str of at most {MAX_ADDRESS_CHARS}")

    @classmethod
    def of_voters(
        cls, voters: Iterable[int], addresses: Mapping[int, str] | None = None
    ) -> Membership:
        """A configuration of voters only (a cluster's seed from ``--peers``)."""
        return cls(frozenset(voters), frozenset(), dict(addresses or {}))

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def is_voter(self, node: int) -> bool:
        return node in self.voters

    def is_member(self, node: int) -> bool:
        return node in self.voters or node in self.learners

    def address(self, node: int) -> str:
        return self.addresses.get(node, "")

    def same_as(self, other: Membership) -> bool:
        """Equal, addresses included (``==`` compares the sets only)."""
        return self == other and dict(self.addresses) == dict(other.addresses)

    def describe(self) -> str:
        """``voters n0,n1,n2 learners n3`` for the operator's log."""
        voters = ",".join(f"n{n}" for n in sorted(self.voters)) or "none"
        text = f"voters {voters}"
        if self.learners:
            text += " learners " + ",".join(f"n{n}" for n in sorted(self.learners))
        return text

    def apply(self, change: Change) -> Membership:
        """This configuration with ``change`` made; ChangeRefused if it makes no sense here."""
        node = change.node_id
        addresses = dict(self.addresses)
        match change.kind:
            case ChangeKind.ADD_LEARNER | ChangeKind.ADD_VOTER:
                if self.is_member(node):
                    role = "voter" if self.is_voter(node) else "learner"
                    raise ChangeRefused(f"n{node} is already a member ({role})")
                if node in self.retired:
                    raise ChangeRefused(
                        f"n{node} was removed from this cluster and its id is retired:"
                        " give the new node a new id (a returning id could vote again"
                        " from an empty disk)"
                    )
                if change.address:
                    addresses[node] = change.address
                if change.kind is ChangeKind.ADD_LEARNER:
                    return self._build(self.voters, self.learners | {node}, addresses)
                return self._build(self.voters | {node}, self.learners, addresses)
            case ChangeKind.PROMOTE:
                if self.is_voter(node):
                    raise ChangeRefused(f"n{node} is already a voter")
                if node not in self.learners:
                    raise ChangeRefused(f"n{node} is not a learner (add it with --learner first)")
                return self._build(self.voters | {node}, self.learners - {node}, addresses)
            case ChangeKind.REMOVE:
                if not self.is_member(node):
                    raise ChangeRefused(f"n{node} is not a member ({self.describe()})")
                if self.voters == {node}:
                    raise ChangeRefused(f"n{node} is the only voter: a cluster needs one")
                if len(self.retired) >= MAX_RETIRED:
                    raise ChangeRefused(
                        f"{MAX_RETIRED} ids are retired already (the bound): no more removals"
                    )
                addresses.pop(node, None)
                return self._build(
                    self.voters - {node}, self.learners - {node}, addresses, self.retired | {node}
                )

    def _build(
        self,
        voters: frozenset[int],
        learners: frozenset[int],
        addresses: dict[int, str],
        retired: frozenset[int] | None = None,
    ) -> Membership:
        try:
            return Membership(
                voters, learners, addresses, self.retired if retired is None else retired
            )
        except ValueError as exc:
            raise ChangeRefused(str(exc)) from None


# ---------------------------------------------------------------- encoding


def encode(config: Membership) -> bytes:
    """The command of a configuration entry (and the form snapshots store).

    Layout after :data:`CONFIG_MAGIC`, every integer big-endian: the voter
    count (2 bytes) and ids (4 bytes each), the same for learners, then per
    member with an address: its id (4), the address's UTF-8 length (2), the
    bytes; then the retired count (2) and ids (4 each). Ids sorted, so equal
    configurations encode alike.
    """
    out = bytearray(CONFIG_MAGIC)
    for ids in (config.voters, config.learners):
        out += len(ids).to_bytes(2, "big")
        for node in sorted(ids):
            out += node.to_bytes(4, "big")
    addresses = sorted((node, a) for node, a in config.addresses.items() if a)
    out += len(addresses).to_bytes(2, "big")
    for node, address in addresses:
        raw = address.encode()
        out += node.to_bytes(4, "big") + len(raw).to_bytes(2, "big") + raw
    out += len(config.retired).to_bytes(2, "big")
    for node in sorted(config.retired):
        out += node.to_bytes(4, "big")
    return bytes(out)


def is_config_command(command: bytes | None) -> bool:
    """Whether a log entry's command is a configuration (never a state machine command)."""
    return command is not None and command.startswith(CONFIG_MAGIC)


class _Reader:
    """Bounds-checked reading of :func:`encode`'s layout."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError("a truncated configuration")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def int(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")


def decode(data: bytes) -> Membership:
    """The configuration :func:`encode` wrote; ValueError for anything else."""
    if not data.startswith(CONFIG_MAGIC):
        raise ValueError("not a configuration")
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"a configuration of {len(data)} bytes (bound {MAX_CONFIG_BYTES})")
    reader = _Reader(data, len(CONFIG_MAGIC))
    sets: list[list[int]] = []
    for _ in range(2):
        count = reader.int(2)
        if count > MAX_MEMBERS:
            raise ValueError(f"{count} members (bound {MAX_MEMBERS})")
        sets.append([reader.int(4) for _ in range(count)])
    voters, learners = sets
    if len(set(voters)) != len(voters) or len(set(learners)) != len(learners):
        raise ValueError("a member listed twice")
    addresses: dict[int, str] = {}
    for _ in range(reader.int(2)):
        node = reader.int(4)
        try:
            address = reader.take(reader.int(2)).decode()
        except UnicodeDecodeError:
            raise ValueError(f"n{node}: an address that is not UTF-8") from None
        if node in addresses:
            raise ValueError(f"n{node}: two addresses")
        addresses[node] = address
    # A configuration written before ids were retired ends here: none retired.
    count = reader.int(2) if reader.pos < len(data) else 0
    if count > MAX_RETIRED:
        raise ValueError(f"{count} retired ids (bound {MAX_RETIRED})")
    retired = [reader.int(4) for _ in range(count)]
    if len(set(retired)) != len(retired):
        raise ValueError("a retired id listed twice")
    if reader.pos != len(data):
        raise ValueError("trailing bytes after a configuration")
    return Membership(frozenset(voters), frozenset(learners), addresses, frozenset(retired))


def entry_config(entry: Entry) -> Membership | None:
    """The configuration ``entry`` carries, or None (a command, the no-op, or malformed).

    A malformed configuration (only a bug could write one: a leader encodes
    what it checked) is treated as an ordinary entry by every node alike, so
    they agree on what their configuration is.
    """
    if not is_config_command(entry.command):
        return None
    assert entry.command is not None
    try:
        return decode(entry.command)
    except ValueError:
        return None


# ----------------------------------------------------- configurations in a log

TermAt = Callable[[int], "int | None"]  # the log's term at an index (None: not in it)


@dataclass(frozen=True, slots=True)
class _ConfigEntry:
    index: int
    term: int
    config: Membership


class ConfigLog:
    """The configuration entries of one node's log, over the configuration at its snapshot.

    Invariant: ``_entries`` are in index order, above ``base_index``, and each
    is still in the log (same index and term: by Log Matching, the same entry).
    """

    def __init__(self, base: Membership, base_index: int, entries: Iterable[Entry]) -> None:
        self.base = base  # in force at base_index (the snapshot's, or the seed)
        self.base_index = base_index
        self._entries: list[_ConfigEntry] = []
        self.add(entries)

    @property
    def latest(self) -> Membership:
        """The configuration in force: the latest in the log, committed or not (thesis §4.1)."""
        return self._entries[-1].config if self._entries else self.base

    @property
    def latest_index(self) -> int:
        """The index of the latest configuration entry (``base_index`` if none in the log)."""
        return self._entries[-1].index if self._entries else self.base_index

    def at(self, index: int) -> Membership:
        """The configuration as of log ``index`` (for a snapshot taken there)."""
        config = self.base
        for item in self._entries:
            if item.index > index:
                break
            config = item.config
        return config

    def add(self, entries: Iterable[Entry]) -> None:
        """Note the configuration entries among ``entries``, just appended at the log's end."""
        for entry in entries:
            config = entry_config(entry)
            if config is not None and entry.index > self.latest_index:
                self._entries.append(_ConfigEntry(entry.index, entry.term, config))

    def sync(self, term_at: TermAt, appended: Iterable[Entry]) -> None:
        """After a follower's repair: drop configurations the log no longer holds, add new ones.

        Thesis §4.1: a server that loses a configuration entry to a log
        truncation falls back to the previous configuration in its log.
        """
        while self._entries and term_at(self._entries[-1].index) != self._entries[-1].term:
            self._entries.pop()
        self.add(e for e in appended if term_at(e.index) == e.term)

    def compact(self, index: int) -> None:
        """The log was compacted up to ``index``: the configuration there becomes the base."""
        self.base = self.at(index)
        self.base_index = index
        self._entries = [item for item in self._entries if item.index > index]

    def reset(self, base: Membership, base_index: int, entries: Iterable[Entry]) -> None:
        """A snapshot was installed: start over from its configuration and the kept entries."""
        self.base = base
        self.base_index = base_index
        self._entries = []
        self.add(entries)


# ------------------------------------------------- a snapshot on the wire

# InstallSnapshot carries the snapshot's data framed with its configuration:
# magic, the configuration's length (4 bytes, big-endian; 0 for none), the
# configuration, then the state machine's data. The chunks and the checksum
# cover the framed bytes, so a configuration damaged in transit is refused
# like damaged data.
SNAPSHOT_MAGIC = b"\xc1kvraft-snapshot\x00"
_LENGTH_BYTES = 4


def frame_snapshot(config: Membership | None, data: bytes) -> bytes:
    """What a leader sends of a snapshot: its configuration, then its data."""
    encoded = encode(config) if config is not None else b""
    return SNAPSHOT_MAGIC + len(encoded).to_bytes(_LENGTH_BYTES, "big") + encoded + data


def unframe_snapshot(framed: bytes) -> tuple[Membership | None, bytes]:
    """:func:`frame_snapshot`'s inverse; ValueError for a damaged frame.

    Bytes without the frame's magic are a snapshot that carries no
    configuration (None): the receiver keeps the one it has at that index.
    """
    if not framed.startswith(SNAPSHOT_MAGIC):
        return None, framed
    start = len(SNAPSHOT_MAGIC) + _LENGTH_BYTES
    if len(framed) < start:
        raise ValueError("a truncated snapshot frame")
    length = int.from_bytes(framed[len(SNAPSHOT_MAGIC) : start], "big")
    if length > MAX_CONFIG_BYTES or start + length > len(framed):
        raise ValueError(f"a snapshot frame's configuration of {length} bytes")
    config = decode(framed[start : start + length]) if length else None
    return config, framed[start + length :]
