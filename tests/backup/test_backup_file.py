"""The backup file format: what it writes reads back; every kind of damage is refused by name."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvraft import backup_file
from kvraft.backup_file import BadBackup

from .support import CLUSTER_ID, state_bytes, write_backup

# magic, version, id length, index, term, revision, length, sha256: then the cluster id, the CRC.
HEADER_BYTES = struct.calcsize(">8sHHQQQQ32s") + len(CLUSTER_ID) + 4


def test_a_backup_reads_back_as_written_and_is_private(tmp_path: Path) -> None:
    data = state_bytes()
    path = tmp_path / "b.kvb"
    write_backup(path, data, index=42, term=3)

    header, read = backup_file.read(path)

    assert read == data
    assert (header.cluster_id, header.index, header.term, header.revision) == (CLUSTER_ID, 42, 3, 5)
    assert header.data_length == len(data)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["b.kvb"], "no temporary left behind"


def test_a_write_replaces_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "b.kvb"
    write_backup(path, b"x" * 1000)
    write_backup(path, b"y")
    assert backup_file.read(path)[1] == b"y"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "bad magic"),
        (lambda b: b"SQLite format 3\0" + b[16:], "bad magic"),
        (lambda b: b[:20], "truncated header"),
        (lambda b: b[:8] + b"\0\2" + b[10:], "unsupported backup format 2"),
        # index flipped: the header's CRC no longer matches
        (lambda b: b[:13] + bytes([b[13] ^ 1]) + b[14:], "header checksum mismatch"),
        (lambda b: b[: HEADER_BYTES - 1], "cluster id runs past the end"),
        (lambda b: b[:-1], "truncated: "),
        (lambda b: b[:HEADER_BYTES], "truncated: 0 bytes of data"),
        (lambda b: b + b"\0", "1 unexpected bytes after the data"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x80]), "data checksum mismatch"),
    ],
    ids=["empty", "not-a-backup", "short-header", "version", "header-bit", "short-id",
         "short-data", "no-data", "extra-byte", "data-bit"],
)  # fmt: skip
def test_damage_is_refused_naming_what_is_wrong(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    good = write_backup(tmp_path / "good.kvb")
    bad = tmp_path / "bad.kvb"
    bad.write_bytes(damage(good))

    with pytest.raises(BadBackup, match=message) as caught:
        backup_file.read(bad)
    assert str(caught.value).startswith(f"{bad}: ")


def test_the_header_must_describe_the_data(tmp_path: Path) -> None:
    header = backup_file.header_for(CLUSTER_ID, 1, 1, 0, b"abc")
    with pytest.raises(ValueError, match="does not describe"):
        backup_file.write(tmp_path / "b.kvb", header, b"abd")
    assert not list(tmp_path.iterdir())


def test_a_cluster_id_at_the_bound_is_written_and_one_past_it_is_refused(tmp_path: Path) -> None:
    at = "c" * backup_file.MAX_CLUSTER_ID_BYTES
    backup_file.write(tmp_path / "b.kvb", backup_file.header_for(at, 1, 1, 0, b"d"), b"d")
    assert backup_file.read(tmp_path / "b.kvb")[0].cluster_id == at
    with pytest.raises(ValueError, match="at most"):
        backup_file.header_for(at + "c", 1, 1, 0, b"d").encode()
