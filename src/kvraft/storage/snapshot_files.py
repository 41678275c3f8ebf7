"""Snapshot data in its own file beside the database, so storing it never blocks a Ready save.

Why a file: written inside the database, a 100 MB snapshot is one transaction
that holds the storage thread for seconds (100 MB into the WAL, then again
into the database at checkpoint), and every Ready save (every fsync that
commits client writes) waits behind it. As a file it is written and fsynced
by whichever thread took the snapshot, in parallel with saves; the database
then records it in a small transaction (a row naming the file, its size and
CRC), which is the commit point.

Crash safety, by the order of the steps:

1. write ``<name>.tmp``, fsync it; rename it to ``<name>``; fsync the directory;
2. commit the row naming ``<name>`` (the snapshot now exists for a restart);
3. delete the file the previous row named.

A SIGKILL before 2 leaves an unreferenced file, after 2 a superseded one; the
next open deletes both (:func:`remove_unreferenced`). A name is never reused
(it carries a random token), so a file the row names is never overwritten.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kvraft.storage.records import CorruptRow, SnapshotRow, snapshot_crc
from kvraft.storage.schema import fsync_path

# snapshot-<index>-<term>-<token>.snap; .tmp while being written.
_NAME: Final = re.compile(r"snapshot-(\d{20})-(\d+)-([0-9a-f]{16})\.snap")
_TMP_SUFFIX: Final = ".tmp"
# Written in slices: each write releases the GIL, and a close() can stop a
# write between two slices.
_CHUNK_BYTES: Final = 4 << 20


class WriteAborted(Exception):
    """The store was closed while a snapshot file was being written; the file was removed."""


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A durable snapshot file, ready to be recorded: its name (in the data dir), size and CRC."""

    name: str
    size: int
    crc: int


def new_name(index: int, term: int) -> str:
    """A fresh file name for the snapshot at ``(index, term)``; never one used before."""
    return f"snapshot-{index:020d}-{term}-{secrets.token_hex(8)}.snap"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a snapshot file name this module makes (no path, no dot-dot)."""
    return _NAME.fullmatch(name) is not None


def write(
    data_dir: Path, index: int, term: int, data: bytes, *, aborted: threading.Event
) -> SnapshotFile:
    """Step 1 of the module docstring: ``data`` durable under a new name in ``data_dir``.

    Raises OSError if the disk refuses (nothing is left behind), WriteAborted
    if ``aborted`` is set before the file is complete.
    """
    name = new_name(index, term)
    final = data_dir / name
    tmp = data_dir / (name + _TMP_SUFFIX)
    view = memoryview(data)
    try:
        with tmp.open("wb") as f:
            for start in range(0, len(view), _CHUNK_BYTES):
                if aborted.is_set():
                    raise WriteAborted(f"{final}: store closed while writing the snapshot")
                f.write(view[start : start + _CHUNK_BYTES])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_path(data_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return SnapshotFile(name, len(view), snapshot_crc(index, term, view))


def read(data_dir: Path, row: SnapshotRow) -> bytes:
    """The data of the file ``row`` names, checked; CorruptRow if missing, short or altered."""
    name, index, size = row.file, row.index, row.size
    if not is_valid_name(name):
        raise CorruptRow(f"snapshot.file is not a snapshot file name: {name!r}")
    path = data_dir / name
    try:
        with path.open("rb") as f:
            data = f.read(size + 1)  # one byte more: a longer file is caught too
    except FileNotFoundError:
        raise CorruptRow(f"snapshot (index {index}) file {name} is missing") from None
    except OSError as e:
        raise CorruptRow(f"snapshot (index {index}) file {name} is unreadable: {e}") from None
    if len(data) != size:
        raise CorruptRow(
            f"snapshot (index {index}) file {name} has {len(data)} bytes, expected {size}"
        )
    if row.crc != snapshot_crc(index, row.term, data):
        raise CorruptRow(f"snapshot (index {index}) checksum mismatch")
    return data


def remove(data_dir: Path, name: str) -> None:
    """Delete a superseded or unrecorded snapshot file (step 3); a missing one is fine."""
    (data_dir / name).unlink(missing_ok=True)


def remove_unreferenced(data_dir: Path, keep: str | None) -> None:
    """Delete every snapshot file and temporary in ``data_dir`` except ``keep``.

    Only names this module makes are touched: nothing else in a data dir is ours to delete.
    """
    for path in data_dir.iterdir():
        name = path.name
        if name != keep and is_valid_name(name.removesuffix(_TMP_SUFFIX)):
            path.unlink(missing_ok=True)
