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
missing key raises NoKey, any other mismatch raises VersionMismatch. Keys are
never deleted, so a key's version only grows.

Memory: one dict entry per key holding a ``(value, version)`` tuple, nothing
else per key; :meth:`data_bytes` keeps a running total so memory tests can
compare it with the process's size without walking the store.

Arguments are trusted: the store is fed by decoded commands that were checked
at submission (:func:`kvraft.kv_protocol.check_op`), so it does not
re-validate types on the apply path.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgpack

from kvraft.errors import NoKey, VersionMismatch
from kvraft.kv_protocol import utf8_len

T = TypeVar("T")

# Bumped when the snapshot layout changes; restore refuses any other value.
SNAPSHOT_FORMAT = 1
# msgpack's largest unsigned integer: a snapshot cannot hold a larger version.
_MAX_WIRE_INT = 2**64 - 1
# Keys sorted per run when encoding a snapshot (about 2 ms of GIL per run).
_SORT_RUN_KEYS = 8192


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
    """Keys to ``(value, version)``; see the module docstring for the contract."""

    __slots__ = ("_data", "_data_bytes")

    def __init__(self) -> None:
        # Invariant: every stored version is >= 1 (a missing key is version 0).
        self._data: dict[str, tuple[str, int]] = {}
        # Invariant: _data_bytes == sum(utf8_len(k) + utf8_len(v) for k, (v, _) in _data).
        self._data_bytes = 0

    # ------------------------------------------------------------------ queries

    def get(self, key: str) -> tuple[str, int]:
        """``(value, version)`` of ``key``; raises NoKey if the key does not exist."""
        entry = self._data.get(key)
        if entry is None:
            raise NoKey(key)
        return entry

    def lookup(self, key: str) -> tuple[str, int] | None:
        """``(value, version)`` of ``key``, or None: :meth:`get` without the exception.

        The apply loop answers many gets on missing keys; raising and catching
        for each would cost more than the lookup itself.
        """
        return self._data.get(key)

    def version(self, key: str) -> int:
        """The key's current version; 0 for a missing key."""
        entry = self._data.get(key)
        return 0 if entry is None else entry[1]

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
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return f"<KVStore {len(self._data)} keys, {self._data_bytes} data bytes>"

    # ------------------------------------------------------------------ updates

    def put(self, key: str, value: str, version: int) -> int:
        """Store ``value`` if ``version`` is the key's current version; the new version.

        Raises NoKey for ``version > 0`` on a missing key and VersionMismatch for
        any other wrong version; nothing changes then.
        """
        entry = self._data.get(key)
        if entry is None:
            if version != 0:
                raise NoKey(key)
            self._data[key] = (value, 1)
            self._data_bytes += utf8_len(key) + utf8_len(value)
            return 1
        old_value, current = entry
        if version != current:
            raise VersionMismatch(f"{key!r} is at version {current}, not {version}")
        self._data[key] = (value, current + 1)
        self._data_bytes += utf8_len(value) - utf8_len(old_value)
        return current + 1

    # ---------------------------------------------------------------- snapshots

    def copy(self) -> KVStore:
        """An independent store with the same contents, in O(keys) pointer copies.

        Shallow is enough: values are immutable ``(value, version)`` tuples, so
        later puts to either store never show in the other. The node takes
        this copy on the event loop and encodes it in another thread.
        """
        clone = KVStore()
        clone._data = self._data.copy()
        clone._data_bytes = self._data_bytes
        return clone

    def snapshot(self) -> bytes:
        """The whole store as canonical msgpack bytes: :meth:`snapshot_chunks`, joined.

        Layout: ``[SNAPSHOT_FORMAT, [key1, value1, version1, key2, ...]]`` with
        keys in ascending order. The flat array saves one header byte per key
        over nested triples; sorting makes the bytes a function of the
        contents only.
        """
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, items_per_chunk: int = 1024) -> Iterator[bytes]:
        """The bytes of :meth:`snapshot` in pieces of ``items_per_chunk`` keys.

        Made to be encoded in a thread beside an event loop: no step holds
        the GIL for long. Keys are sorted in runs of :data:`_SORT_RUN_KEYS`
        merged lazily (one ``sorted()`` of a million keys holds the GIL for
        hundreds of ms), and each chunk is handed out as it is packed rather
        than grown into one buffer that is copied at the end. The store must
        not change while the iterator is consumed (encode a :meth:`copy`).
        """
        data = self._data
        keys = list(data)
        runs = [sorted(keys[i : i + _SORT_RUN_KEYS]) for i in range(0, len(keys), _SORT_RUN_KEYS)]
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        packer.pack_array_header(2)
        packer.pack(SNAPSHOT_FORMAT)
        packer.pack_array_header(3 * len(keys))
        pack = packer.pack
        in_chunk = 0
        for key in heapq.merge(*runs):
            value, version = data[key]
            pack(key)
            pack(value)
            pack(version)
            in_chunk += 1
            if in_chunk == items_per_chunk:
                yield packer.bytes()
                packer.reset()
                in_chunk = 0
        yield packer.bytes()

    @classmethod
    def restore(cls, data: bytes) -> KVStore:
        """The store a :meth:`snapshot` encoded; raises BadSnapshot on anything else.

        Checked: the format number, every type (str key, str value, int
        version >= 1), keys strictly ascending (so no duplicates and the input
        is canonical), and no bytes after the end. Truncated or padded data is
        refused, never half-restored.
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
        if _array_header(unpacker, "snapshot") != 2:
            raise BadSnapshot("snapshot is not a [format, items] pair")
        fmt = unpacker.unpack()
        if type(fmt) is not int or fmt != SNAPSHOT_FORMAT:
            raise BadSnapshot(f"unknown snapshot format {fmt!r} (expected {SNAPSHOT_FORMAT})")
        count = _array_header(unpacker, "item array")
        if count % 3:
            raise BadSnapshot(f"item array of length {count} is not key/value/version triples")
        store = cls()
        data = store._data
        total = 0
        previous: str | None = None
        for _ in range(count // 3):
            key = unpacker.unpack()
            value = unpacker.unpack()
            version = unpacker.unpack()
            if type(key) is not str or type(value) is not str or type(version) is not int:
                raise BadSnapshot(
                    f"bad entry types ({type(key).__name__}, {type(value).__name__}, "
                    f"{type(version).__name__}); expected (str, str, int)"
                )
            if not 1 <= version <= _MAX_WIRE_INT:
                raise BadSnapshot(f"key {key!r} has impossible version {version}")
            if previous is not None and key <= previous:
                raise BadSnapshot(f"keys out of order or repeated: {previous!r} then {key!r}")
            previous = key
            data[key] = (value, version)
            total += utf8_len(key) + utf8_len(value)
        store._data_bytes = total
        return store


def _array_header(unpacker: Any, what: str) -> int:
    try:
        return unpacker.read_array_header()  # type: ignore[no-any-return]
    except ValueError:  # msgpack's "Unexpected type header on stream"
        raise BadSnapshot(f"{what} is not a msgpack array") from None
