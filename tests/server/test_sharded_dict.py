"""ShardedDict: a dict's behaviour for what the store uses, over small dicts.

Reference: kvraft.server.sharded_dict (a million-key dict's resize stalled
every replica at the same put)
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvraft.server.sharded_dict import SHARDS, ShardedDict

operations = st.lists(
    st.tuples(st.sampled_from(["set", "pop", "get"]), st.text(max_size=4), st.binary(max_size=4)),
    max_size=200,
)


@given(operations)
def test_it_behaves_as_a_dict(ops: list[tuple[str, str, bytes]]) -> None:
    model: dict[str, bytes] = {}
    sharded: ShardedDict[str, bytes] = ShardedDict()
    for op, key, value in ops:
        if op == "set":
            model[key] = value
            sharded[key] = value
        elif op == "pop":
            assert sharded.pop(key) == model.pop(key, None)
        else:
            assert sharded.get(key) == model.get(key)
            assert (key in sharded) == (key in model)
    assert len(sharded) == len(model)
    assert sorted(sharded) == sorted(model)
    assert all(sharded[key] == value for key, value in model.items())


def test_a_copy_is_equal_and_independent() -> None:
    original: ShardedDict[str, bytes] = ShardedDict()
    for i in range(1000):
        original[f"k{i}"] = b"v"
    clone = original.copy()
    assert clone == original
    clone["new"] = b"x"
    assert clone.pop("k1") == b"v"
    assert clone != original and "new" not in original and "k1" in original


def test_keys_spread_over_every_shard_so_no_table_holds_most_of_them() -> None:
    """What bounds a resize: with 64,000 keys, no shard holds more than twice its share."""
    sharded: ShardedDict[str, bytes] = ShardedDict()
    keys = 1000 * SHARDS
    for i in range(keys):
        sharded[f"key/{i:07d}"] = b""
    sizes = [len(shard) for shard in sharded._shards]
    assert len(sizes) == SHARDS and sum(sizes) == keys
    assert max(sizes) < 2 * keys // SHARDS
