"""The commands the RSM puts in the Raft log, their results, and their encoding.

A command is a :class:`GetOp` or a :class:`PutOp` (the union :data:`Op`). The
same frozen classes are the arguments of the ``get``/``put`` RPCs (wire tags
20 and 21) and, encoded with :func:`encode_command`, the bytes of a log
entry: one codec, one set of classes from the client to the state machine.

Each command carries ``client_id`` and ``request_id``. They do not affect what
the command does; they let the RSM recognise its own entry: when the entry
committed at the index it waits on has another ``(client_id, request_id)``,
a different command won that index and the RPC answers WrongLeader.

Applying a command (:func:`apply_command`) yields a :data:`Result`, one small
frozen class per outcome (wire tags 22..25), so a result travels back as a
typed message and callers dispatch with ``match``:

========================  =====================================================
``GetOk(value, version)``  a get found the key
``PutOk(version)``         a put applied; ``version`` is the key's new version
``NoKeyResult()``          a get of a missing key, or a put at version > 0 on one
``VersionMismatchResult``  a put's version was not ``current_version``; nothing
                           changed
========================  =====================================================

:func:`result_of` turns a result back into a value or the user-facing error.

Whose fault: :func:`check_op` raises InvalidArgument for a caller's bad input,
before anything is sent. :func:`decode_command` raises :class:`BadCommand`
for bytes that are not exactly one well-formed command; in a log entry that
is a bug or a raw test-hook submit, never user input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

from kvraft.errors import InvalidArgument, NoKey, ProtocolError, VersionMismatch
from kvraft.rpc.codec import pack, unpack, wire_message
from kvraft.server.kvstore import KVStore, utf8_len

# Key bytes are small so a key plus the frame envelope fit in the 4096 bytes
# ServerOptions reserves beside the largest value in a frame.
DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
# Versions must fit msgpack's signed 64-bit range, and so must version + 1.
MAX_VERSION = 2**63 - 2


class BadCommand(ValueError):
    """Bytes that do not decode to exactly one well-formed GetOp or PutOp."""


# ---------------------------------------------------------------------- commands


@wire_message(20)
@dataclass(frozen=True, slots=True)
class GetOp:
    """Read ``key``: answers GetOk or NoKeyResult. Goes through the log like a put."""

    key: str
    client_id: str
    request_id: int

    @property
    def op_id(self) -> tuple[str, int]:
        """The identity the RSM matches a committed entry against."""
        return (self.client_id, self.request_id)


@wire_message(21)
@dataclass(frozen=True, slots=True)
class PutOp:
    """Store ``value`` if ``key`` is at ``version``: PutOk, VersionMismatchResult or NoKeyResult."""

    key: str
    value: str
    version: int
    client_id: str
    request_id: int

    @property
    def op_id(self) -> tuple[str, int]:
        """The identity the RSM matches a committed entry against."""
        return (self.client_id, self.request_id)


Op = GetOp | PutOp


# ----------------------------------------------------------------------- results


@wire_message(22)
@dataclass(frozen=True, slots=True)
class GetOk:
    """The key's value and version at the get's place in the log."""

    value: str
    version: int


@wire_message(23)
@dataclass(frozen=True, slots=True)
class PutOk:
    """The put applied; ``version`` is the key's new version (the put's version + 1)."""

    version: int


@wire_message(24)
@dataclass(frozen=True, slots=True)
class NoKeyResult:
    """The key does not exist (a get, or a put at version > 0)."""


@wire_message(25)
@dataclass(frozen=True, slots=True)
class VersionMismatchResult:
    """The put's version was not the key's; the key is at ``current_version``, unchanged."""

    current_version: int


Result = GetOk | PutOk | NoKeyResult | VersionMismatchResult


@wire_message(26)
@dataclass(frozen=True, slots=True)
class NotLeaderResult:
    """Not a result of applying: the server is not the leader and submitted nothing.

    ``leader_address`` is the address (from ``--peers``) of the server it
    believes leads, if it knows one, so the client can go straight there.
    """

    leader_address: str | None


# ------------------------------------------------------------------- encoding


def encode_command(op: Op) -> bytes:
    """The log-entry bytes of ``op`` (the wire encoding of the message itself)."""
    if type(op) is not GetOp and type(op) is not PutOp:
        raise TypeError(f"not a command: {type(op).__name__}")
    return pack(op)


def decode_command(data: bytes) -> Op:
    """The command :func:`encode_command` made; BadCommand for anything else.

    Refused: undecodable msgpack, trailing bytes, any value that is not a
    GetOp or PutOp (other wire messages included), wrong field types (the
    codec checks every field, so a bool is not an int), and negative
    versions or request ids. Size limits are not checked here: they are a
    submission policy (:func:`check_op`), and a committed entry must apply
    the same on every replica whatever the limits of the one decoding it.
    """
    try:
        op = unpack(data)
    except ProtocolError as exc:
        raise BadCommand(str(exc)) from None
    if type(op) is not GetOp and type(op) is not PutOp:
        raise BadCommand(f"not a command: {type(op).__name__}")
    if op.request_id < 0:
        raise BadCommand(f"negative request id {op.request_id}")
    if type(op) is PutOp and not 0 <= op.version <= MAX_VERSION:
        raise BadCommand(f"put version {op.version} out of range")
    return op


# ------------------------------------------------------------------- validation


def check_op(
    op: object,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
) -> None:
    """Raise InvalidArgument unless ``op`` is a command a user may submit.

    The dataclasses do not check types at construction, so this is where a
    caller's mistake is caught, locally and before anything is sent: a key
    or value that is not exactly ``str`` or is not encodable as UTF-8 (a lone
    surrogate), a key or value longer than its limit in UTF-8 bytes, a
    version that is not exactly ``int`` (``True`` is refused) or is outside
    ``0..MAX_VERSION``, and ids of the wrong type.
    """
    if type(op) is not GetOp and type(op) is not PutOp:
        raise InvalidArgument(f"not a command: {type(op).__name__}")
    _check_str("key", op.key, max_key_bytes)
    if type(op) is PutOp:
        _check_str("value", op.value, max_value_bytes)
        check_version(op.version)
    if type(op.client_id) is not str:
        raise InvalidArgument(f"client_id must be str, not {type(op.client_id).__name__}")
    if type(op.request_id) is not int or op.request_id < 0:
        raise InvalidArgument(f"request_id must be an int >= 0, not {op.request_id!r}")


# The name the task description used; one function, two names.
validate_op = check_op


def check_version(version: object) -> None:
    """Raise InvalidArgument unless ``version`` is an ``int`` (not bool) in ``0..MAX_VERSION``."""
    if type(version) is not int:
        raise InvalidArgument(f"version must be int, not {type(version).__name__}")
    if not 0 <= version <= MAX_VERSION:
        raise InvalidArgument(f"version must be in 0..{MAX_VERSION}, not {version}")


def _check_str(what: str, text: object, max_bytes: int) -> None:
    if type(text) is not str:
        raise InvalidArgument(f"{what} must be str, not {type(text).__name__}")
    try:
        size = utf8_len(text)
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not encodable as UTF-8 (lone surrogate?)") from None
    if size > max_bytes:
        raise InvalidArgument(f"{what} of {size} bytes exceeds the maximum of {max_bytes}")


# ---------------------------------------------------------------------- applying


def apply_command(store: KVStore, op: Op) -> Result:
    """Apply one committed command to ``store``; the result for the waiting RPC.

    Deterministic: the same store and command give the same result and the
    same new store on every replica.
    """
    match op:
        case GetOp(key=key):
            entry = store.lookup(key)
            if entry is None:
                return NoKeyResult()
            return GetOk(entry[0], entry[1])
        case PutOp(key=key, value=value, version=version):
            current = store.version(key)
            if version != current:
                if current == 0:
                    return NoKeyResult()
                return VersionMismatchResult(current)
            return PutOk(store.put(key, value, version))
        case _:
            assert_never(op)


def result_of(result: Any) -> tuple[str | None, int]:
    """A result as the client's return value; raises the user-facing error it stands for.

    GetOk gives ``(value, version)``, PutOk ``(None, new_version)``;
    NoKeyResult raises NoKey and VersionMismatchResult VersionMismatch.
    Anything else is the server's fault and raises ProtocolError.
    """
    match result:
        case GetOk(value=value, version=version):
            return value, version
        case PutOk(version=version):
            return None, version
        case NoKeyResult():
            raise NoKey("no such key")
        case VersionMismatchResult(current_version=current):
            raise VersionMismatch(f"the key is at version {current}")
        case _:
            raise ProtocolError(f"not an operation result: {type(result).__name__}")
