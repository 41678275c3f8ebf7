"""A dict split over a fixed number of smaller dicts: no single insert resizes a huge table.

Why: a dict grows by rebuilding its whole table when an insert passes two
thirds of it, so the put that creates key 699,051 of a store copies every
entry before it returns: 27 ms on an idle machine, 68 ms at 1.4M keys, and
130-370 ms in the 1M-key load (benchmarks/results/memory-1m.md), where every
replica applies that put and so stalls at the same moment. Split over
:data:`SHARDS` dicts by the key's hash, each resize copies a 64th of the
entries, and the shards, filling evenly, resize at different puts.

Only what the store uses is here. Iteration order is unspecified (the store
promises none: its snapshots sort the keys). Two ShardedDicts of one process
place a key in the same shard (``hash`` is fixed for the process's life), so
equality compares shard by shard.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A power of two, so a shard is picked with a mask. 64: at 1M keys a resize
# copies about 16,000 entries (under a millisecond), and 64 empty dicts cost
# a few KiB.
SHARDS: Final = 64
_MASK: Final = SHARDS - 1


class ShardedDict(Generic[K, V]):
    """The subset of ``dict`` a KVStore needs, over :data:`SHARDS` dicts."""

    __slots__ = ("_shards",)

    def __init__(self, shards: list[dict[K, V]] | None = None) -> None:
        if shards is None:
            shards = [{} for _ in range(SHARDS)]
        assert len(shards) == SHARDS
        self._shards = shards

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & _MASK].get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _MASK][key]

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) & _MASK][key] = value

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & _MASK].pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __iter__(self) -> Iterator[K]:
        """The keys, in no particular order."""
        return itertools.chain.from_iterable(self._shards)

    def copy(self) -> ShardedDict[K, V]:
        """A shallow copy (the values are shared)."""
        return ShardedDict([shard.copy() for shard in self._shards])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardedDict):
            return NotImplemented
        return self._shards == other._shards

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable
