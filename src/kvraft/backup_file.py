"""The backup file of ``kvraft snapshot save``: a small checked header, then the state snapshot.

Layout (big-endian)::

    magic        8 bytes  b"KVRBAK\\r\\n" (the CR LF catches a text-mode copy)
    version      u16      BACKUP_FORMAT
    id_length    u16      bytes of cluster_id
    index        u64      the Raft index the snapshot is the state as of
    term         u64      the term of the entry at index
    revision     u64      the store's revision (etcd's) at index
    data_length  u64      bytes of data after the header
    sha256       32 bytes SHA-256 of the data
    cluster_id   id_length bytes, UTF-8: the cluster it was taken from
    header_crc   u32      CRC32 of every header byte before it
    data         data_length bytes: a state snapshot (kvraft.server.state_snapshot)

Why both checksums: the header's CRC tells a damaged header (index, length)
from damaged data before anything trusts its fields; the SHA-256 of the data
is what an operator compares across copies (``kvraft snapshot status``
prints it). :func:`read` refuses anything else, each time naming what is wrong:
another magic or version, a bad header CRC, a file shorter or longer than the
header says, a data checksum mismatch.

:func:`write` is atomic (a temporary file in the same directory, fsynced,
renamed over the target, the directory fsynced) and the file is mode 0600: it
holds every key and value of the cluster.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MAGIC: Final = b"KVRBAK\r\n"
# Bumped when the layout changes; read refuses any other value.
BACKUP_FORMAT: Final = 1
_FIXED: Final = struct.Struct(">8sHHQQQQ32s")
_CRC: Final = struct.Struct(">I")
# A cluster id is a short name (--cluster-id); bounded so a header stays small.
MAX_CLUSTER_ID_BYTES: Final = 1024
FILE_MODE: Final = 0o600


class BadBackup(Exception):
    """The file is not a backup this build reads, or it is damaged; the message says how."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup says of its snapshot."""

    cluster_id: str
    index: int
    term: int
    revision: int
    data_length: int
    sha256: bytes

    def encode(self) -> bytes:
        cid = self.cluster_id.encode()
        if len(cid) > MAX_CLUSTER_ID_BYTES:
            raise ValueError(f"cluster id of {len(cid)} bytes, at most {MAX_CLUSTER_ID_BYTES}")
        head = _FIXED.pack(
            MAGIC,
            BACKUP_FORMAT,
            len(cid),
            self.index,
            self.term,
            self.revision,
            self.data_length,
            self.sha256,
        )
        head += cid
        return head + _CRC.pack(zlib.crc32(head))


def header_for(cluster_id: str, index: int, term: int, revision: int, data: bytes) -> BackupHeader:
    """The header of a backup holding ``data``."""
    return BackupHeader(cluster_id, index, term, revision, len(data), hashlib.sha256(data).digest())


def write(path: Path, header: BackupHeader, data: bytes) -> None:
    """Write the backup to ``path`` atomically, mode 0600; OSError if the disk refuses."""
    if header.data_length != len(data) or header.sha256 != hashlib.sha256(data).digest():
        raise ValueError("the header does not describe this data")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def parse(blob: bytes) -> tuple[BackupHeader, bytes]:
    """The header and data of a backup's bytes; BadBackup naming what is wrong."""
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise BadBackup("not a kvraft backup (bad magic)")
    if len(blob) < _FIXED.size:
        raise BadBackup(f"truncated header: {len(blob)} bytes, at least {_FIXED.size} expected")
    _, version, id_length, index, term, revision, length, digest = _FIXED.unpack_from(blob)
    if version != BACKUP_FORMAT:
        raise BadBackup(f"unsupported backup format {version} (this build reads {BACKUP_FORMAT})")
    end = _FIXED.size + id_length
    if id_length > MAX_CLUSTER_ID_BYTES or len(blob) < end + _CRC.size:
        raise BadBackup("truncated or corrupt header (cluster id runs past the end)")
    (crc,) = _CRC.unpack_from(blob, end)
    if crc != zlib.crc32(blob[:end]):
        raise BadBackup("corrupt header: header checksum mismatch")
    try:
        cluster_id = blob[_FIXED.size : end].decode()
    except UnicodeDecodeError:
        raise BadBackup("corrupt header: the cluster id is not UTF-8") from None
    data = blob[end + _CRC.size :]
    if len(data) < length:
        raise BadBackup(f"truncated: {len(data)} bytes of data, the header says {length}")
    if len(data) > length:
        raise BadBackup(f"{len(data) - length} unexpected bytes after the data")
    if hashlib.sha256(data).digest() != digest:
        raise BadBackup("data checksum mismatch (SHA-256): the snapshot is damaged")
    return BackupHeader(cluster_id, index, term, revision, length, digest), data


def read(path: Path) -> tuple[BackupHeader, bytes]:
    """The header and data of the backup at ``path``; BadBackup if damaged, OSError unreadable."""
    try:
        return parse(Path(path).read_bytes())
    except BadBackup as exc:
        raise BadBackup(f"{path}: {exc}") from None
