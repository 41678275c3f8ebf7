"""KVStore: the versioned-KV contract of the README, by example and against a dict model."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvraft.errors import NoKey, VersionMismatch
from kvraft.server.kvstore import SNAPSHOT_FORMAT, BadSnapshot, KVStore

# ---------------------------------------------------------------- by example


def test_get_of_a_missing_key_raises_nokey() -> None:
    with pytest.raises(NoKey):
        KVStore().get("k")


def test_put_at_version_zero_creates_the_key_at_version_one() -> None:
    store = KVStore()
    assert store.put("k", "v", 0) == 1
    assert store.get("k") == ("v", 1)


def test_put_at_the_current_version_replaces_the_value_and_bumps_the_version() -> None:
    store = KVStore()
    store.put("k", "a", 0)
    assert store.put("k", "b", 1) == 2
    assert store.get("k") == ("b", 2)


def test_put_at_a_positive_version_on_a_missing_key_raises_nokey_and_creates_nothing() -> None:
    store = KVStore()
    with pytest.raises(NoKey):
        store.put("k", "v", 3)
    assert "k" not in store
    assert len(store) == 0


@pytest.mark.parametrize("version", [0, 1, 3])
def test_put_at_a_wrong_version_raises_mismatch_and_changes_nothing(version: int) -> None:
    store = KVStore()
    store.put("k", "a", 0)
    store.put("k", "b", 1)
    with pytest.raises(VersionMismatch):
        store.put("k", "c", version)
    assert store.get("k") == ("b", 2)


def test_version_of_a_missing_key_is_zero() -> None:
    store = KVStore()
    assert store.version("k") == 0
    store.put("k", "v", 0)
    assert store.version("k") == 1


def test_empty_string_is_a_value_like_any_other() -> None:
    store = KVStore()
    store.put("k", "", 0)
    assert store.get("k") == ("", 1)
    assert store.lookup("k") == ("", 1)


def test_data_bytes_counts_utf8_bytes_of_keys_and_values() -> None:
    store = KVStore()
    store.put("ab", "xyz", 0)
    assert store.data_bytes() == 5
    store.put("é", "€", 0)  # 2 + 3 bytes in UTF-8
    assert store.data_bytes() == 10
    store.put("ab", "", 1)
    assert store.data_bytes() == 7
    assert len(store) == 2


# ----------------------------------------------------------------- snapshots


def test_snapshot_of_an_empty_store_restores_an_empty_store() -> None:
    restored = KVStore.restore(KVStore().snapshot())
    assert len(restored) == 0
    assert restored == KVStore()


def test_snapshot_is_canonical_whatever_the_insertion_order() -> None:
    # Revisions record the order of writes, so two stores are equal only if
    # their keys were written at the same revisions: build one by writes in
    # one order, the other by writes in another order at the same revisions.
    a, b = KVStore(), KVStore()
    revisions = {"x": 1, "a": 2, "m": 3}
    for key in ["x", "a", "m"]:
        a.write(key, key * 2, revisions[key])
    for key in ["m", "x", "a"]:
        b.write(key, key * 2, revisions[key])
    a.set_revision(3)
    b.set_revision(3)
    assert a.snapshot() == b.snapshot()
    assert KVStore.restore(a.snapshot()).snapshot() == a.snapshot()


def test_snapshot_costs_few_bytes_beyond_the_data() -> None:
    store = KVStore()
    for i in range(1000):
        store.put(f"key{i:04}", "v" * 10, 0)
    overhead = len(store.snapshot()) - store.data_bytes()
    # a str header each for key and value, a small version and lease in one
    # byte each, two revisions under 65536 in three bytes each
    assert overhead <= 10 * len(store) + 16


def _snapshot_of(items: list[object], fmt: object = SNAPSHOT_FORMAT, revision: object = 9) -> bytes:
    """A snapshot of ``items``: key, value, version triples (revisions 1, 1, lease 0 added)
    unless the list is given as 6-item keys already (``_raw``)."""
    full: list[object] = []
    for i in range(0, len(items) - len(items) % 3, 3):
        full += [*items[i : i + 3], 1, 1, 0]
    full += items[len(items) - len(items) % 3 :]
    return _raw(full, fmt, revision)


def _raw(items: list[object], fmt: object = SNAPSHOT_FORMAT, revision: object = 9) -> bytes:
    # An empty lease table (next id 1, no leases) after the items.
    return msgpack.packb([fmt, revision, items, [1, []]], use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"\xc1", "not a msgpack array"),
        (msgpack.packb({"a": 1}), "snapshot is not a msgpack array"),
        (msgpack.packb([1, 2]), "leases\\] array"),
        (msgpack.packb([SNAPSHOT_FORMAT, 0, {}, [1, []]]), "item array is not a msgpack array"),
        (_snapshot_of([], fmt=1), "format"),
        (_snapshot_of([], fmt=True), "format"),
        (_snapshot_of([], revision=-1), "revision"),
        (_snapshot_of([], revision="9"), "revision"),
        (_raw(["k", "v", 1]), "6-item"),
        (_snapshot_of(["k", "v", 0]), "version"),
        (_snapshot_of(["k", "v", -1]), "version"),
        (_snapshot_of(["k", "v", True]), "ints"),
        (_snapshot_of(["k", b"v", 1]), "types"),
        (_snapshot_of([1, "v", 1]), "types"),
        (_snapshot_of(["k", "v", 1.0]), "ints"),
        (_raw(["k", "v", 1, 0, 0, 0]), "revisions"),
        (_raw(["k", "v", 1, 2, 1, 0]), "revisions"),
        (_raw(["k", "v", 1, 1, 10, 0]), "revisions"),
        (_raw(["k", "v", 1, 1, 1, -1]), "lease"),
        (_snapshot_of(["b", "v", 1, "a", "v", 1]), "order"),
        (_snapshot_of(["a", "v", 1, "a", "w", 2]), "order"),
        (_snapshot_of(["a", "v", 1]) + b"\x00", "unexpected bytes"),
        (_snapshot_of(["a", "v", 1])[:-1], "truncated"),
        (b"\x94\x03\x00\x96\xa1a\xa1v\x01", "truncated"),
        (b"\x94\x03\x00\x96\xa1\xff\xa1v\x01\x01\x01\x00", "undecodable"),
    ],
)
def test_restore_refuses_corrupt_snapshots_with_a_clear_error(data: bytes, why: str) -> None:
    with pytest.raises(BadSnapshot, match=why):
        KVStore.restore(data)


def test_restore_refuses_every_truncation_of_a_valid_snapshot() -> None:
    store = KVStore()
    for i in range(20):
        store.put(f"k{i}", f"value {i}", 0)
    data = store.snapshot()
    for cut in range(len(data)):
        with pytest.raises(BadSnapshot):
            KVStore.restore(data[:cut])


def test_restore_refuses_non_bytes() -> None:
    with pytest.raises(BadSnapshot, match="bytes"):
        KVStore.restore("not bytes")  # type: ignore[arg-type]


@given(st.binary(max_size=64))
def test_restore_of_arbitrary_bytes_gives_a_store_or_badsnapshot_never_another_error(
    data: bytes,
) -> None:
    try:
        store = KVStore.restore(data)
    except BadSnapshot:
        return
    assert KVStore.restore(store.snapshot()) == store


# ------------------------------------------------------- against a dict model

keys = st.sampled_from(["a", "b", "c", "é", ""])
values = st.text(max_size=8)
versions = st.integers(min_value=0, max_value=5)


class KVStoreVersusDict(RuleBasedStateMachine):
    """Every operation of KVStore agrees with a plain dict of (value, version),
    including across snapshot/restore round trips at random points."""

    def __init__(self) -> None:
        super().__init__()
        self.store = KVStore()
        self.model: dict[str, tuple[str, int]] = {}

    @rule(key=keys)
    def get(self, key: str) -> None:
        if key in self.model:
            assert self.store.get(key) == self.model[key]
        else:
            with pytest.raises(NoKey):
                self.store.get(key)
        assert self.store.lookup(key) == self.model.get(key)

    @rule(key=keys, value=values, version=versions)
    def put(self, key: str, value: str, version: int) -> None:
        current = self.model.get(key, ("", 0))[1]
        if version == current:
            assert self.store.put(key, value, version) == current + 1
            self.model[key] = (value, current + 1)
        elif key not in self.model:
            with pytest.raises(NoKey):
                self.store.put(key, value, version)
        else:
            with pytest.raises(VersionMismatch):
                self.store.put(key, value, version)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def put_at_current_version(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        value, version = self.model[key]
        assert self.store.put(key, value + "!", version) == version + 1
        self.model[key] = (value + "!", version + 1)

    @rule()
    def snapshot_and_restore(self) -> None:
        data = self.store.snapshot()
        self.store = KVStore.restore(data)
        assert self.store.snapshot() == data

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.store) == len(self.model)
        assert self.store.data_bytes() == sum(
            len(k.encode()) + len(v.encode()) for k, (v, _) in self.model.items()
        )
        assert sorted(self.store) == sorted(self.model)


TestKVStoreVersusDict = KVStoreVersusDict.TestCase
TestKVStoreVersusDict.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


@given(st.dictionaries(st.text(max_size=6), st.tuples(values, st.integers(1, 2**64 - 1))))
def test_snapshot_restore_round_trips_any_contents(contents: dict[str, tuple[str, int]]) -> None:
    # Large versions are out of reach of successive puts: start from a
    # hand-made canonical snapshot instead.
    items: list[object] = []
    for key in sorted(contents):
        items += [key, contents[key][0], contents[key][1]]
    store = KVStore.restore(_snapshot_of(items))
    assert store.revision == 9
    assert {k: store.get(k) for k in store} == contents
    assert KVStore.restore(store.snapshot()) == store
    assert store.snapshot() == _snapshot_of(items)


def test_a_copy_rebuilds_its_key_order_when_first_written_or_ranged() -> None:
    """copy() leaves the key order out (it is rebuilt on first use): writes,
    removes and ranges of the copy must see each key exactly once."""
    store = KVStore()
    for key in ("b", "a", "c"):
        store.write(key, "v", 1)
    store.set_revision(1)
    for first in ("write", "remove", "range"):
        clone = store.copy()
        if first == "write":
            clone.write("d", "v", 2)
            assert list(clone.keys_in("", "")) == ["a", "b", "c", "d"]
        elif first == "remove":
            clone.remove("a")
            assert list(clone.keys_in("", "")) == ["b", "c"]
        else:
            assert list(clone.keys_in("b", "")) == ["b", "c"]
        assert list(store.keys_in("", "")) == ["a", "b", "c"]
    assert store.copy().snapshot() == store.snapshot()
