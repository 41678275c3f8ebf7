"""The versioned key-value state machine (the README's contract): pure, deterministic, no I/O.

Every replica applies the same committed commands to its own :class:`KVStore`
in log order, so the store must be a deterministic function of that sequence:
no clocks, no randomness, no iteration-order dependence in anything it hands
out. :meth:`KVStore.snapshot` is canonical (keys sorted), so two replicas with
the same contents produce byte-identical snapshots, whatever order their keys
were created in or restored from.

Semantics: a missing key behaves as version 0. ``put(k, v, n)`` applies only if
``n`` is the key's current version, and then the version becomes ``n + 1``;
``put(k, v, 0)`` creates a missing key at version 1, ``put(k, v, n > 0)`` on a
missing key raises NoKey, any other mismatch raises VersionMismatch. A deleted
key is missing again: version 0, and a later create starts it at version 1.

Revisions (etcd's model): the store has one ``revision``, 0 before any write,
that every write command which changes something advances by exactly one; a
transaction's writes all share one new revision (:meth:`write` takes the
revision, :meth:`set_revision` commits it; ``kvraft.server.commands`` decides
what a command does). Per key the store keeps ``(value, version,
create_revision, mod_revision, lease)``: the revision that created the key
(since it last did not exist) and the one that last wrote it.

Leases: ``lease`` is the id of the lease the key is attached to (0: none);
:attr:`KVStore.leases` is the replicated :class:`~kvraft.server.leases.LeaseTable`,
whose per-lease key sets :meth:`write` and :meth:`remove` keep exact, so a
revoke finds a lease's keys without a scan.

Memory: one dict entry per key (in a :class:`ShardedDict`, so that no
insert rebuilds one huge table) whose value is one ``bytes`` record, a packed
header (version, create/mod revision, lease) followed by the value's UTF-8
(:func:`pack_record`), plus the key once more in a ``SortedList`` for ranges
in key order (sortedcontainers: a list of lists, a pointer per key). Measured
at a million keys of 100-byte values (``benchmarks/results/memory.md``): the
5-tuple of a str value and int objects it replaces took 376 bytes per key,
the record 264; one object per key instead of three, and none of them a
container the garbage collector has to look at. The tuple
(:data:`Entry`) is what every accessor still hands out (:meth:`entry`, the
change journal), built on demand. :meth:`data_bytes` keeps a running total
of key and value UTF-8 bytes, exact, so memory tests can compare it with the
process's size without walking the store.

Arguments are trusted: the store is fed by decoded commands that were checked
at submission (:func:`kvraft.kv_protocol.check_op`), so it does not
re-validate types on the apply path.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import msgpack
from sortedcontainers import SortedList

from kvraft.errors import NoKey, VersionMismatch
from kvraft.kv_protocol import RANGE_KEY_OVERHEAD_BYTES, KeyValue, utf8_len
from kvraft.lease_protocol import MAX_KEYS_PER_LEASE
from kvraft.server.leases import BadLeaseTable, LeaseTable
from kvraft.server.sharded_dict import ShardedDict

T = TypeVar("T")

# Bumped when the snapshot layout changes; restore refuses any other value.
# 2: the store revision, and per key create/mod revision and lease.
# 3: the lease table after the items.
SNAPSHOT_FORMAT = 3
# Keys sorted per run when a copy without its key order is encoded (about 2 ms
# of GIL per run).
_SORT_RUN_KEYS = 8192
# A key's stored tuple: value, version, create_revision, mod_revision, lease.
Entry = tuple[str, int, int, int, int]
# msgpack's largest unsigned integer: a snapshot cannot hold a larger version.
_MAX_WIRE_INT = 2**64 - 1

# A record's header, by its first byte: the common case (no lease, counters
# under 2**32) in 13 bytes, anything else in 33. 13 + 100 bytes of value fit
# CPython's 160-byte allocation class where 33 + 100 take 176.
_SMALL: Final = struct.Struct("<BIII")  # 0, version, create_revision, mod_revision
_LARGE: Final = struct.Struct("<BQQQQ")  # 1, version, create, mod, lease
_SMALL_LIMIT: Final = 1 << 32


def pack_record(value: str, version: int, create: int, mod: int, lease: int) -> bytes:
    """One key's stored record: a header (see _SMALL, _LARGE) then ``value`` in UTF-8."""
    if lease == 0 and version < _SMALL_LIMIT and mod < _SMALL_LIMIT:  # create <= mod
        return _SMALL.pack(0, version, create, mod) + value.encode()
    return _LARGE.pack(1, version, create, mod, lease) + value.encode()


def unpack_record(record: bytes) -> Entry:
    """The :data:`Entry` tuple a :func:`pack_record` record holds."""
    if record[0] == 0:
        _, version, create, mod = _SMALL.unpack_from(record)
        return record[_SMALL.size :].decode(), version, create, mod, 0
    _, version, create, mod, lease = _LARGE.unpack_from(record)
    return record[_LARGE.size :].decode(), version, create, mod, lease


def _record_version(record: bytes) -> int:
    """The version in a record, without decoding its value."""
    return int.from_bytes(record[1:5] if record[0] == 0 else record[1:9], "little")


def _value_len(record: bytes) -> int:
    """The UTF-8 length of a record's value."""
    return len(record) - (_SMALL.size if record[0] == 0 else _LARGE.size)


class BadSnapshot(ValueError):
    """Snapshot bytes that are not a valid, canonical KVStore snapshot.

    The store cannot tell whose fault that is: the caller turns it into a
    StorageError (corrupt data dir) or a ProtocolError (a bad InstallSnapshot).
    """


def decode_whole(data: object, read: Callable[[Any], T]) -> T:
    """``read(unpacker)`` over all of ``data``; BadSnapshot for anything but exactly that.

    The one strict frame around every snapshot decoder: bytes only, nothing
    truncated, nothing after the end, and msgpack's assorted exceptions on
    junk all reported as BadSnapshot (never half-restored state).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadSnapshot(f"snapshot must be bytes, not {type(data).__name__}")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        value = read(unpacker)
        end = unpacker.tell()
    except BadSnapshot:
        raise
    except msgpack.OutOfData:
        raise BadSnapshot(f"snapshot truncated ({len(data)} bytes)") from None
    except Exception as exc:  # msgpack raises several unrelated classes on junk
        raise BadSnapshot(f"undecodable snapshot: {type(exc).__name__}: {exc}") from None
    if end != len(data):
        raise BadSnapshot(f"{len(data) - end} unexpected bytes after the snapshot")
    return value


class KVStore:
    """Keys to ``(value, version, create_revision, mod_revision, lease)``: see the module."""

    __slots__ = ("_data", "_data_bytes", "_journal", "_keys_or_none", "_revision", "leases")

    def __init__(self) -> None:
        # Invariant: every stored version is >= 1 (a missing key is version 0),
        # and 1 <= create_revision <= mod_revision <= _revision; each value is
        # a pack_record() record (immutable, so a shallow copy is a snapshot).
        # Split over small dicts: an insert that grows the table rebuilds only
        # a 64th of it (a million-key dict's resize stalled every replica).
        self._data: ShardedDict[str, bytes] = ShardedDict()
        # Invariant: the keys of _data, in ascending order; or None in a copy
        # until it is first needed (see copy()).
        self._keys_or_none: SortedList[str] | None = SortedList()
        # Invariant: _data_bytes == sum(utf8_len(k) + utf8_len(value of k) for k in _data).
        self._data_bytes = 0
        self._revision = 0
        # Invariant: a key's lease is 0 or a live lease of this table, whose key
        # set holds the key.
        self.leases = LeaseTable()
        # While not None, every write and remove appends (key, entry before,
        # entry after; None for a missing key): the watch history's source
        # (see take_changes). Never copied or snapshotted.
        self._journal: list[tuple[str, Entry | None, Entry | None]] | None = None

    # ------------------------------------------------------------------ queries

    @property
    def _keys(self) -> SortedList[str]:
        """The keys in order, built on first use in a copy (which skips it: see copy())."""
        keys = self._keys_or_none
        if keys is None:
            keys = self._keys_or_none = SortedList(self._data)
        return keys

    @property
    def revision(self) -> int:
        """The store's revision: the number of writes that changed something so far."""
        return self._revision

    def get(self, key: str) -> tuple[str, int]:
        """``(value, version)`` of ``key``; raises NoKey if the key does not exist."""
        record = self._data.get(key)
        if record is None:
            raise NoKey(key)
        entry = unpack_record(record)
        return entry[0], entry[1]

    def lookup(self, key: str) -> tuple[str, int] | None:
        """``(value, version)`` of ``key``, or None: :meth:`get` without the exception.

        The apply loop answers many gets on missing keys; raising and catching
        for each would cost more than the lookup itself.
        """
        record = self._data.get(key)
        if record is None:
            return None
        entry = unpack_record(record)
        return entry[0], entry[1]

    def entry(self, key: str) -> Entry | None:
        """The key's whole stored tuple (value, version, create/mod revision, lease), or None."""
        record = self._data.get(key)
        return None if record is None else unpack_record(record)

    def version(self, key: str) -> int:
        """The key's current version; 0 for a missing key."""
        record = self._data.get(key)
        return 0 if record is None else _record_version(record)

    def keys_in(self, start: str, end: str) -> Iterator[str]:
        """The keys in ``[start, end)`` (``end`` "" for no end), ascending, lazily."""
        return self._keys.irange(start, end if end != "" else None, inclusive=(True, False))

    def range(
        self,
        start: str,
        end: str,
        limit: int,
        keys_only: bool,
        max_bytes: int,
        *,
        strict: bool = False,
    ) -> tuple[list[KeyValue], bool]:
        """The keys in ``[start, end)`` with their metadata, and whether more remain.

        Stops after ``limit`` keys (0: no limit) or before the key that would
        take the reply past ``max_bytes`` (key + value + RANGE_KEY_OVERHEAD_BYTES
        per key; a ``keys_only`` value counts nothing), but returns at least
        one key if there is one, unless ``strict`` (a txn's read budget,
        which is never exceeded).
        """
        kvs: list[KeyValue] = []
        used = 0
        data = self._data
        for key in self.keys_in(start, end):
            if limit and len(kvs) == limit:
                return kvs, True
            value, version, create, mod, lease = unpack_record(data[key])
            if keys_only:
                value = ""
            size = utf8_len(key) + utf8_len(value) + RANGE_KEY_OVERHEAD_BYTES
            if used + size > max_bytes and (kvs or strict):
                return kvs, True
            used += size
            kvs.append(KeyValue(key, value, version, create, mod, lease))
        return kvs, False

    def __len__(self) -> int:
        """Number of keys."""
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        """The keys, in no particular order."""
        return iter(self._data)

    def data_bytes(self) -> int:
        """Sum over keys of the UTF-8 length of key plus value (O(1), kept up to date)."""
        return self._data_bytes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self._revision == other._revision
            and self._data == other._data
            and self.leases == other.leases
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return (
            f"<KVStore {len(self._data)} keys, {self._data_bytes} data bytes,"
            f" revision {self._revision}>"
        )

    # ------------------------------------------------------------------ updates

    def put(self, key: str, value: str, version: int) -> int:
        """Store ``value`` if ``version`` is the key's current version; the new version.

        Raises NoKey for ``version > 0`` on a missing key and VersionMismatch for
        any other wrong version; nothing changes then. Advances the revision.
        """
        current = self.version(key)
        if version != current:
            if current == 0:
                raise NoKey(key)
            raise VersionMismatch(f"{key!r} is at version {current}, not {version}")
        new_version = self.write(key, value, self._revision + 1)
        self._revision += 1
        return new_version

    def write(self, key: str, value: str, revision: int, lease: int = 0) -> int:
        """Store ``value`` at ``key`` as written by ``revision``, unconditionally; the new version.

        A primitive for the command layer: the caller checks versions (and
        that ``lease``, if not 0, is live with room for the key) and commits
        ``revision`` with :meth:`set_revision` once the command is done. The
        key is attached to ``lease`` from now on, detached from any other.
        """
        record = self._data.get(key)
        entry: Entry | None = None
        if record is None:
            keys = self._keys  # built (in a copy) before the new key is in _data
            new: Entry = (value, 1, revision, revision, lease)
            packed = self._data[key] = pack_record(*new)
            keys.add(key)
            self._data_bytes += utf8_len(key) + _value_len(packed)
            if lease:
                self.leases.attach(key, lease)
        else:
            entry = unpack_record(record)
            _, current, create, _, old_lease = entry
            new = (value, current + 1, create, revision, lease)
            packed = self._data[key] = pack_record(*new)
            self._data_bytes += _value_len(packed) - _value_len(record)
            if old_lease != lease:
                if old_lease:
                    self.leases.detach(key, old_lease)
                if lease:
                    self.leases.attach(key, lease)
        if self._journal is not None:
            self._journal.append((key, entry, new))
        return new[1]

    def remove(self, key: str) -> bool:
        """Delete ``key`` if it exists (a primitive, like :meth:`write`); whether it did."""
        keys = self._keys  # built (in a copy) before the key leaves _data
        record = self._data.pop(key, None)
        if record is None:
            return False
        keys.remove(key)
        self._data_bytes -= utf8_len(key) + _value_len(record)
        entry = unpack_record(record)
        if entry[4]:
            self.leases.detach(key, entry[4])
        if self._journal is not None:
            self._journal.append((key, entry, None))
        return True

    def record_changes(self) -> None:
        """Start journaling writes and removes, for :meth:`take_changes`."""
        self._journal = []

    def take_changes(self) -> list[tuple[str, Entry | None, Entry | None]]:
        """The changes since :meth:`record_changes`, in order; journaling stops."""
        changes, self._journal = self._journal or [], None
        return changes

    def set_revision(self, revision: int) -> None:
        """Commit the revision a command's writes were made at (only ever upwards)."""
        assert revision >= self._revision, (revision, self._revision)
        self._revision = revision

    # ---------------------------------------------------------------- snapshots

    def copy(self) -> KVStore:
        """An independent store with the same contents, in O(keys) pointer copies.

        Shallow is enough: records are immutable bytes, so later writes to
        either store never show in the other. The node takes this copy on the
        event loop and encodes it in another thread, so the copy leaves out
        the key order (copying a SortedList re-sorts it: 3x the dict's copy,
        measured 0.24 s against 0.08 s for a million keys); a copy rebuilds it
        on first use, and its snapshot sorts in runs in the encoding thread.
        """
        clone = KVStore()
        clone._data = self._data.copy()
        clone._keys_or_none = None
        clone._data_bytes = self._data_bytes
        clone._revision = self._revision
        clone.leases = self.leases.copy()
        return clone

    def snapshot(self) -> bytes:
        """The whole store as canonical msgpack bytes: :meth:`snapshot_chunks`, joined.

        Layout: ``[SNAPSHOT_FORMAT, revision, [key1, value1, version1,
        create_revision1, mod_revision1, lease1, key2, ...], leases]`` with keys in
        ascending order and ``leases`` the lease table (:meth:`LeaseTable.pack_into`).
        The flat array saves one header byte per key over nested tuples;
        sorting makes the bytes a function of the contents only.
        """
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, items_per_chunk: int = 1024) -> Iterator[bytes]:
        """The bytes of :meth:`snapshot` in pieces of ``items_per_chunk`` keys.

        Made to be encoded in a thread beside an event loop: no step holds the
        GIL for long. The keys are in order already, or (in a :meth:`copy`)
        sorted in runs of :data:`_SORT_RUN_KEYS` merged lazily: one
        ``sorted()`` of a million keys holds the GIL for hundreds of ms. Each
        chunk is handed out as it is packed rather than grown into one buffer
        copied at the end. The store must not change while the iterator is
        consumed (encode a :meth:`copy`).
        """
        data = self._data
        if self._keys_or_none is not None:
            ordered: Iterator[str] = iter(self._keys_or_none)
        else:
            keys = list(data)
            runs = [
                sorted(keys[i : i + _SORT_RUN_KEYS]) for i in range(0, len(keys), _SORT_RUN_KEYS)
            ]
            ordered = heapq.merge(*runs)
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        packer.pack_array_header(4)
        packer.pack(SNAPSHOT_FORMAT)
        packer.pack(self._revision)
        packer.pack_array_header(6 * len(data))
        pack = packer.pack
        small, small_size = _SMALL.unpack_from, _SMALL.size
        in_chunk = 0
        for key in ordered:
            record = data[key]
            if record[0] == 0:  # unpack_record, inlined: this loop runs once per key
                _, version, create, mod = small(record)
                value, lease = record[small_size:].decode(), 0
            else:
                value, version, create, mod, lease = unpack_record(record)
            pack(key)
            pack(value)
            pack(version)
            pack(create)
            pack(mod)
            pack(lease)
            in_chunk += 1
            if in_chunk == items_per_chunk:
                yield packer.bytes()
                packer.reset()
                in_chunk = 0
        self.leases.pack_into(packer)
        yield packer.bytes()

    @classmethod
    def restore(cls, data: bytes) -> KVStore:
        """The store a :meth:`snapshot` encoded; raises BadSnapshot on anything else.

        Checked: the format number, the revision (an int >= 0), every type
        (str key, str value, int version >= 1, create and mod revision with
        ``1 <= create <= mod <= revision``, lease >= 0), keys strictly
        ascending (so no duplicates and the input is canonical), and no
        bytes after the end. Truncated or padded data is refused, never
        half-restored.
        """
        return decode_whole(data, cls._read)

    @classmethod
    def read_from(cls, unpacker: Any) -> KVStore:
        """The store whose snapshot value comes next in ``unpacker``; BadSnapshot if malformed.

        The same checks as :meth:`restore`, for a snapshot nested in a larger
        one (the state machine's, with its sessions); the caller checks what
        follows and turns msgpack's own errors into BadSnapshot.
        """
        return cls._read(unpacker)

    @classmethod
    def _read(cls, unpacker: Any) -> KVStore:
        if _array_header(unpacker, "snapshot") != 4:
            raise BadSnapshot("snapshot is not a [format, revision, items, leases] array")
        fmt = unpacker.unpack()
        if type(fmt) is not int or fmt != SNAPSHOT_FORMAT:
            raise BadSnapshot(f"unknown snapshot format {fmt!r} (expected {SNAPSHOT_FORMAT})")
        revision = unpacker.unpack()
        if type(revision) is not int or not 0 <= revision <= _MAX_WIRE_INT:
            raise BadSnapshot(f"impossible store revision {revision!r}")
        count = _array_header(unpacker, "item array")
        if count % 6:
            raise BadSnapshot(f"item array of length {count} is not 6-item keys")
        store = cls()
        data = store._data
        keys: list[str] = []
        total = 0
        previous: str | None = None
        leased: list[tuple[str, int]] = []
        for _ in range(count // 6):
            key, value, version, create, mod, lease = (unpacker.unpack() for _ in range(6))
            if type(key) is not str or type(value) is not str:
                raise BadSnapshot(
                    f"bad entry types ({type(key).__name__}, {type(value).__name__});"
                    " expected str key and value"
                )
            if any(type(n) is not int for n in (version, create, mod, lease)):
                raise BadSnapshot(f"key {key!r}: version, revisions and lease must be ints")
            if not 1 <= version <= _MAX_WIRE_INT:
                raise BadSnapshot(f"key {key!r} has impossible version {version}")
            if not 1 <= create <= mod <= revision:
                raise BadSnapshot(
                    f"key {key!r}: revisions {create}, {mod} impossible at revision {revision}"
                )
            if not 0 <= lease <= _MAX_WIRE_INT:
                raise BadSnapshot(f"key {key!r} has impossible lease {lease}")
            if previous is not None and key <= previous:
                raise BadSnapshot(f"keys out of order or repeated: {previous!r} then {key!r}")
            previous = key
            if lease:
                leased.append((key, lease))
            record = data[key] = pack_record(value, version, create, mod, lease)
            keys.append(key)
            total += utf8_len(key) + _value_len(record)
        try:
            store.leases = LeaseTable.read(unpacker)
        except BadLeaseTable as exc:
            raise BadSnapshot(str(exc)) from None
        for key, lease in leased:
            if lease not in store.leases:
                raise BadSnapshot(f"key {key!r} is attached to lease {lease}, which is not live")
            if not store.leases.room_for(lease, 1):
                raise BadSnapshot(f"lease {lease} has over {MAX_KEYS_PER_LEASE} keys")
            store.leases.attach(key, lease)
        store._keys_or_none = SortedList(keys)
        store._data_bytes = total
        store._revision = revision
        return store


def _array_header(unpacker: Any, what: str) -> int:
    try:
        return unpacker.read_array_header()  # type: ignore[no-any-return]
    except ValueError:  # msgpack's "Unexpected type header on stream"
        raise BadSnapshot(f"{what} is not a msgpack array") from None
