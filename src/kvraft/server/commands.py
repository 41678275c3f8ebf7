"""Commands in the Raft log: their bytes, and what applying one does to the store.

The commands themselves (:class:`~kvraft.kv_protocol.GetOp`,
:class:`~kvraft.kv_protocol.PutOp`) and their results are the protocol both
ends share, in :mod:`kvraft.kv_protocol`; this is the server-only half. A log
entry's bytes are the command's wire encoding (:func:`encode_command`): one
codec, one set of classes from the client to the state machine.

Whose fault: :func:`decode_command` raises :class:`BadCommand` for bytes that
are not exactly one well-formed command; in a log entry that is a bug or a
raw test-hook submit, never user input (user input was checked with
``check_op`` before it was submitted).
"""

from __future__ import annotations

from typing import assert_never

from kvraft.errors import ProtocolError
from kvraft.kv_protocol import (
    MAX_VERSION,
    GetOk,
    GetOp,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    Result,
    VersionMismatchResult,
    acked_below_error,
)
from kvraft.rpc.codec import pack, unpack
from kvraft.server.kvstore import KVStore


class BadCommand(ValueError):
    """Bytes that do not decode to exactly one well-formed GetOp or PutOp."""


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
    versions or request ids, and an ``acked_below`` the protocol forbids
    (above the request id, or a window over MAX_IN_FLIGHT_PER_CLIENT: that
    window is what bounds a client session). Size limits are not checked here: they are a
    submission policy (``check_op``), and a committed entry must apply
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
    why = acked_below_error(op.request_id, op.acked_below)
    if why is not None:
        raise BadCommand(why)
    if type(op) is PutOp and not 0 <= op.version <= MAX_VERSION:
        raise BadCommand(f"put version {op.version} out of range")
    return op


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
