"""The lease table of the replicated state: pure, deterministic, no clock.

Every replica holds the same table, because it changes only when a log entry
is applied: a grant takes the next id of a counter, a keepalive counts one
more renewal, a revoke (by call or by the leader's expiry) removes the lease
after its keys were deleted. What a lease holds here is only what every
replica agrees on — its TTL, its renewal count and its keys; *when* it
expires is the leader's business (:mod:`kvraft.server.lease_keeper`).

The keys of a lease are kept beside it (a set per lease, maintained by
:class:`~kvraft.server.kvstore.KVStore` on every write and removal), so a
revoke finds them without a scan. Sets do not iterate in a deterministic
order across processes (string hashes are randomised), so anything handed
out — the keys a revoke deletes, the keys ``lease_ttl`` lists — is sorted.

Snapshot layout (inside the store's): ``[next_id, [id1, ttl1, renewals1,
id2, ...]]`` with ids ascending; the keys are not stored twice, the store's
items name their lease and rebuild the sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kvraft.lease_protocol import MAX_KEYS_PER_LEASE, MAX_LEASE_ID, MAX_LEASES


class BadLeaseTable(ValueError):
    """A snapshot's lease table is malformed (the store turns it into BadSnapshot)."""


class Lease:
    """One live lease: its TTL in seconds, how many keepalives applied, its keys."""

    __slots__ = ("keys", "renewals", "ttl")

    def __init__(self, ttl: int, renewals: int = 0) -> None:
        self.ttl = ttl
        # Invariant: the number of keepalives applied to this lease; an expiry
        # applies only at the count its proposer saw.
        self.renewals = renewals
        # Invariant: exactly the store's keys whose entry names this lease;
        # len(keys) <= MAX_KEYS_PER_LEASE.
        self.keys: set[str] = set()

    def __repr__(self) -> str:
        return f"<Lease ttl={self.ttl} renewals={self.renewals} keys={len(self.keys)}>"


class LeaseTable:
    """Lease id to :class:`Lease`, and the counter the next grant takes its id from."""

    __slots__ = ("_leases", "next_id")

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        # Invariant: greater than every id ever granted (ids are never reused).
        self.next_id = 1

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def ids(self) -> Iterator[int]:
        """The live lease ids, ascending."""
        return iter(sorted(self._leases))

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def full(self) -> bool:
        """Whether a grant now would pass MAX_LEASES."""
        return len(self._leases) >= MAX_LEASES

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id. The caller checks :meth:`full` first."""
        assert not self.full() and self.next_id <= MAX_LEASE_ID
        lease_id = self.next_id
        self.next_id += 1
        self._leases[lease_id] = Lease(ttl)
        return lease_id

    def pop(self, lease_id: int) -> Lease:
        """Remove a lease whose keys the caller has deleted."""
        lease = self._leases.pop(lease_id)
        assert not lease.keys, (lease_id, len(lease.keys))
        return lease

    # The store's hooks: a key's lease changed.

    def attach(self, key: str, lease_id: int) -> None:
        self._leases[lease_id].keys.add(key)

    def detach(self, key: str, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def room_for(self, lease_id: int, new_keys: int) -> bool:
        """Whether ``new_keys`` more keys fit on lease ``lease_id`` (MAX_KEYS_PER_LEASE)."""
        return len(self._leases[lease_id].keys) + new_keys <= MAX_KEYS_PER_LEASE

    def copy(self) -> LeaseTable:
        """An independent copy (key sets included), for a snapshot encoded elsewhere."""
        clone = LeaseTable()
        clone.next_id = self.next_id
        for lease_id, lease in self._leases.items():
            twin = Lease(lease.ttl, lease.renewals)
            twin.keys = set(lease.keys)
            clone._leases[lease_id] = twin
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeaseTable):
            return NotImplemented
        return self.next_id == other.next_id and self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def _state(self) -> dict[int, tuple[int, int, frozenset[str]]]:
        return {
            i: (lease.ttl, lease.renewals, frozenset(lease.keys))
            for i, lease in self._leases.items()
        }

    # ---------------------------------------------------------------- snapshots

    def pack_into(self, packer: Any) -> None:
        """Append ``[next_id, [id, ttl, renewals, ...]]`` to ``packer``, ids ascending."""
        packer.pack_array_header(2)
        packer.pack(self.next_id)
        packer.pack_array_header(3 * len(self._leases))
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            packer.pack(lease_id)
            packer.pack(lease.ttl)
            packer.pack(lease.renewals)

    @classmethod
    def read(cls, unpacker: Any) -> LeaseTable:
        """The table :meth:`pack_into` wrote (keys empty: the store attaches them).

        Strict: ints only, ids ascending and below ``next_id``, at most
        MAX_LEASES, TTLs positive, renewals >= 0.
        """
        table = cls()
        if _array_header(unpacker, "lease table") != 2:
            raise BadLeaseTable("lease table is not a [next_id, leases] pair")
        next_id = unpacker.unpack()
        count = _array_header(unpacker, "lease array")
        if type(next_id) is not int or not 1 <= next_id <= MAX_LEASE_ID + 1:
            raise BadLeaseTable(f"impossible next lease id {next_id!r}")
        if count % 3 or count // 3 > MAX_LEASES:
            raise BadLeaseTable(f"lease array of length {count}")
        previous = 0
        for _ in range(count // 3):
            lease_id, ttl, renewals = (unpacker.unpack() for _ in range(3))
            if any(type(n) is not int for n in (lease_id, ttl, renewals)):
                raise BadLeaseTable(f"lease {lease_id!r}: id, ttl and renewals must be ints")
            if not previous < lease_id < next_id:
                raise BadLeaseTable(f"lease ids out of order or past next id: {lease_id}")
            if ttl < 1 or renewals < 0:
                raise BadLeaseTable(f"lease {lease_id}: impossible ttl {ttl} or renewals")
            previous = lease_id
            table._leases[lease_id] = Lease(ttl, renewals)
        table.next_id = next_id
        return table


def _array_header(unpacker: Any, what: str) -> int:
    try:
        return unpacker.read_array_header()  # type: ignore[no-any-return]
    except ValueError:  # msgpack's "Unexpected type header on stream"
        raise BadLeaseTable(f"{what} is not a msgpack array") from None
