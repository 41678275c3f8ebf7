"""KVStore's compact per-key record: every entry round-trips, at each header form's bounds.

The store keeps each key as one packed ``bytes`` record (a 13-byte header for
the common case, 33 bytes for large counters or a lease) and hands out the
:data:`~kvraft.server.kvstore.Entry` tuple; these tests check the packing is
invisible: what goes in comes out, through writes, snapshots and restores.
"""

from __future__ import annotations

import struct
import sys

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.lease_protocol import MAX_LEASE_ID, MIN_LEASE_TTL_S
from kvraft.server.kvstore import SNAPSHOT_FORMAT, KVStore, pack_record, unpack_record

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


@pytest.mark.parametrize(
    "entry",
    [
        ("", 1, 1, 1, 0),
        ("v", MAX_U32, MAX_U32, MAX_U32, 0),  # the small form's bound
        ("v", MAX_U32 + 1, 1, 1, 0),  # one past it, in the version
        ("v", 1, 1, MAX_U32 + 1, 0),  # one past it, in the mod revision
        ("v", 1, 1, 1, 1),  # any lease takes the large form
        ("héllo ☃", MAX_U64, MAX_U64, MAX_U64, MAX_U64),  # the large form's bound
    ],
)
def test_a_record_holds_its_entry_exactly_at_each_forms_bounds(
    entry: tuple[str, int, int, int, int],
) -> None:
    assert unpack_record(pack_record(*entry)) == entry


def test_the_common_record_has_the_13_byte_header() -> None:
    assert len(pack_record("x" * 100, 7, 3, 9, 0)) == 13 + 100
    assert len(pack_record("x" * 100, 7, 3, 9, 5)) == 33 + 100


def test_past_the_largest_wire_integer_a_record_refuses_to_pack() -> None:
    with pytest.raises(struct.error):  # the snapshot could not carry it either
        pack_record("v", MAX_U64 + 1, 1, 1, 0)


@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.text(max_size=40),
            st.integers(1, MAX_U64),
            st.integers(0, MAX_LEASE_ID),
        ),
        max_size=20,
    )
)
def test_entries_of_any_size_survive_a_snapshot_and_restore(
    rows: list[tuple[str, str, int, int]],
) -> None:
    """Built as a restored snapshot (the only way to reach huge versions and leases)."""
    items: list[object] = []
    revision = MAX_U64
    for key, value, version, lease in sorted({r[0]: r for r in rows}.values()):
        items += [key, value, version, 1, revision, lease]
    # Every lease a key names is live in the table that follows the keys.
    lease_ids = sorted({r[3] for r in rows} - {0})
    leases = [field for lease_id in lease_ids for field in (lease_id, MIN_LEASE_TTL_S, 0)]
    table = [MAX_LEASE_ID + 1, leases]
    data = msgpack.packb([SNAPSHOT_FORMAT, revision, items, table], use_bin_type=True)
    store = KVStore.restore(data)
    for key, value, version, lease in {r[0]: r for r in rows}.values():
        assert store.entry(key) == (value, version, 1, revision, lease)
        assert store.get(key) == (value, version)
        assert store.version(key) == version
    assert store.snapshot() == data
    assert store.data_bytes() == sum(
        len(k.encode()) + len(v.encode()) for k, v, *_ in {r[0]: r for r in rows}.values()
    )


def test_writes_keep_version_revisions_and_lease_through_the_record() -> None:
    store = KVStore()
    store.write("k", "a", 1)
    store.set_revision(1)
    store.write("k", "bb", 2)
    store.set_revision(2)
    assert store.entry("k") == ("bb", 2, 1, 2, 0)
    store.record_changes()
    store.write("k", "ccc", 3)
    store.remove("k")
    assert store.take_changes() == [
        ("k", ("bb", 2, 1, 2, 0), ("ccc", 3, 1, 3, 0)),
        ("k", ("ccc", 3, 1, 3, 0), None),
    ]
    assert store.data_bytes() == 0


def test_a_key_of_100_byte_values_costs_one_small_object() -> None:
    """What the record is for: one 160-byte allocation per value, not a tuple, a str and ints."""
    record = pack_record("x" * 100, 1, 5000, 5000, 0)
    assert sys.getsizeof(record) <= 160
    old = ("x" * 100, 1, 5000, 5000, 0)
    assert sys.getsizeof(record) < sys.getsizeof(old) + sys.getsizeof(old[0])
