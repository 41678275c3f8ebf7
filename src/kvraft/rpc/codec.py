"""The one codec: msgpack bytes <-> envelopes and typed messages.

Wire format (each a msgpack array inside one frame, see ``framing``):

- request: ``[0, request_id, method, sender, args]`` — expects a reply;
- reply:   ``[1, request_id, error, result]`` — ``error`` is ``None`` or
  ``[code, message]``;
- notify:  ``[2, method, sender, args]`` — one-way, never answered (Raft
  messages travel this way: Raft tolerates loss and its replies are messages of
  their own);
- handshake: ``[3, step, sender, args]`` — the peer authentication that opens a
  peer's connection (:mod:`kvraft.rpc.peer_auth`); its own kind so that a
  fault proxy can tell it from the traffic it drops at random.

``sender`` names who sent the frame: ``"p3"`` for peer 3, ``"c<hex>"`` for a
client. Typed messages (frozen dataclasses: the ones listed in
:mod:`kvraft.rpc.wire_types`, registered when this module is imported, and any
a test registers with :func:`wire_message`) travel as msgpack extension types
whose code is the class's tag and whose data is the packed field tuple;
decoding checks the field count and every field's type against the class's
annotations, so a handler never sees a wrong type.
Messages nest (an AppendEntries carries Entries) at most :data:`MAX_NESTING`
deep: msgpack decodes each level on the C stack, so unbounded nesting from the
network would overflow it and kill the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import msgpack

from kvraft.errors import ProtocolError
from kvraft.rpc.wire_types import WIRE_TYPES

T = TypeVar("T")

REQUEST, REPLY, NOTIFY, HANDSHAKE = 0, 1, 2, 3
# How deep registered messages may nest inside one another on the wire.
MAX_NESTING = 8


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    method: str
    sender: str
    args: Any


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    error: tuple[str, str] | None
    result: Any


@dataclass(frozen=True, slots=True)
class Notify:
    method: str
    sender: str
    args: Any


@dataclass(frozen=True, slots=True)
class Handshake:
    """One step of the peer handshake (``step`` is one of peer_auth's step names)."""

    step: str
    sender: str
    args: Any


Envelope = Request | Reply | Notify | Handshake


def peer_sender(peer_id: int) -> str:
    """The sender identity of Raft peer ``peer_id``."""
    return f"p{peer_id}"


def client_sender(client_id: str) -> str:
    """The sender identity of a client with id ``client_id``."""
    return f"c{client_id}"


def sender_peer_id(sender: str) -> int | None:
    """The peer id in a peer sender identity, or None for clients and junk.

    Only the exact form :func:`peer_sender` makes counts: ``"p07"``, ``"p²"``
    or ``"p-1"`` are junk, not peers.
    """
    digits = sender[1:]
    canonical = digits == "0" or digits[:1] != "0"
    if sender[:1] == "p" and digits.isascii() and digits.isdigit() and canonical:
        return int(digits)
    return None


# ---------------------------------------------------------------- typed messages

_BY_TAG: dict[int, type[Any]] = {}
_TAG_OF: dict[type[Any], int] = {}
_HINTS: dict[type[Any], list[tuple[str, Any]]] = {}


def wire_message(tag: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass to travel on the wire under ``tag`` (0..127)."""

    def register(cls: type[T]) -> type[T]:
        assert dataclasses.is_dataclass(cls), cls
        assert 0 <= tag <= 127, tag
        assert tag not in _BY_TAG or _BY_TAG[tag] is cls, f"tag {tag} taken by {_BY_TAG[tag]}"
        # Check the annotations now if they resolve now (a forward reference
        # to a class defined later is checked at first use instead).
        with contextlib.suppress(NameError):
            _fields(cls)
        _BY_TAG[tag] = cls
        _TAG_OF[cls] = tag
        return cls

    return register


class WireSchemaError(AssertionError):
    """A registered message has an annotation the codec cannot check: a local bug."""


def _fields(cls: type[Any]) -> list[tuple[str, Any]]:
    hints = _HINTS.get(cls)
    if hints is None:
        resolved = typing.get_type_hints(cls)
        hints = [(f.name, resolved[f.name]) for f in dataclasses.fields(cls)]
        for name, hint in hints:
            if not _supported(hint):
                raise WireSchemaError(f"{cls.__name__}.{name}: unsupported annotation {hint!r}")
        _HINTS[cls] = hints
    return hints


def _supported(hint: Any) -> bool:
    """Whether :func:`_conforms` can check values against ``hint``."""
    if hint is Any or hint is None or hint is type(None):
        return True
    if hint in (int, float, str, bool, bytes):
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return all(_supported(h) for h in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _supported(args[0])
        return all(_supported(h) for h in args)
    if origin is dict:
        return all(_supported(h) for h in args)
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


class _PackState(threading.local):
    """Per thread: one reusable Packer per nesting depth.

    A message's fields are packed by a nested pack inside the outer one, and a
    Packer cannot be re-entered; a fresh ``msgpack.packb`` per message costs
    a 1 MiB buffer allocation each time (measured: 25 us of a 27 us encode).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.packers: list[msgpack.Packer] = []


_pack_state = _PackState()


def _default(obj: Any) -> Any:
    tag = _TAG_OF.get(type(obj))
    if tag is None:
        raise TypeError(f"cannot encode {type(obj).__name__} on the wire")
    values = [getattr(obj, name) for name, _ in _fields(type(obj))]
    state = _pack_state
    depth = state.depth
    if depth == len(state.packers):
        state.packers.append(msgpack.Packer(default=_default, use_bin_type=True))
    state.depth = depth + 1
    try:
        data = state.packers[depth].pack(values)
    except BaseException:
        state.packers[depth].reset()
        raise
    finally:
        state.depth = depth
    return msgpack.ExtType(tag, data)


def _ext_hook_at(depth: int) -> Callable[[int, bytes], Any]:
    """The msgpack ext hook for messages ``depth`` levels deep."""
    return lambda code, data: _decode_message(code, data, depth)


_EXT_HOOKS = [_ext_hook_at(depth) for depth in range(1, MAX_NESTING + 1)]


def _decode_message(code: int, data: bytes, depth: int) -> Any:
    cls = _BY_TAG.get(code)
    if cls is None:
        raise ProtocolError(f"unknown message type {code}")
    ext_hook = _EXT_HOOKS[depth] if depth < MAX_NESTING else _too_deep
    values = msgpack.unpackb(
        data, ext_hook=ext_hook, raw=False, use_list=False, strict_map_key=False
    )
    checks = _field_checks(cls)
    if not isinstance(values, tuple) or len(values) != len(checks):
        raise ProtocolError(f"{cls.__name__}: expected {len(checks)} fields")
    for value, (name, conforms) in zip(values, checks, strict=True):
        if not conforms(value):
            raise ProtocolError(f"{cls.__name__}.{name}: wrong type {type(value).__name__}")
    return cls(*values)


_CHECKS: dict[type[Any], list[tuple[str, Callable[[Any], bool]]]] = {}


def _field_checks(cls: type[Any]) -> list[tuple[str, Callable[[Any], bool]]]:
    """Per field of ``cls``, a compiled type check (decoding is hot: every Raft entry)."""
    checks = _CHECKS.get(cls)
    if checks is None:
        checks = [(name, _checker(hint)) for name, hint in _fields(cls)]
        _CHECKS[cls] = checks
    return checks


def _checker(hint: Any) -> Callable[[Any], bool]:
    """A function that tells whether a decoded value matches ``hint`` (see _conforms)."""
    if hint is Any:
        return lambda v: True
    if hint is None or hint is type(None):
        return lambda v: v is None
    if hint is float:
        return lambda v: type(v) in (float, int)
    if hint in (int, str, bool, bytes):
        return lambda v: type(v) is hint
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [_checker(h) for h in args]
        return lambda v: any(check(v) for check in options)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if isinstance(args[0], type) and args[0] in _TAG_OF:
                item_type = args[0]  # the codec built these: type identity suffices
                return lambda v: isinstance(v, tuple) and all(type(x) is item_type for x in v)
            item = _checker(args[0])
            return lambda v: isinstance(v, tuple) and all(item(x) for x in v)
        items = [_checker(h) for h in args]
        return lambda v: (
            isinstance(v, tuple)
            and len(v) == len(items)
            and all(check(x) for check, x in zip(items, v, strict=True))
        )
    if origin is dict:
        key_check, value_check = (_checker(h) for h in args)
        return lambda v: (
            isinstance(v, dict) and all(key_check(k) and value_check(x) for k, x in v.items())
        )
    if isinstance(hint, type):
        return lambda v: type(v) is hint
    raise WireSchemaError(f"unsupported wire annotation {hint!r}")


def _too_deep(code: int, data: bytes) -> Any:
    raise ProtocolError(f"messages nested more than {MAX_NESTING} deep")


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded value matches a type annotation (the subset the wire uses)."""
    return _checker(hint)(value)


def pack(obj: Any) -> bytes:
    """Encode any wire value (plain msgpack values and registered messages)."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """Decode what :func:`pack` made; raise ProtocolError on anything else."""
    try:
        return msgpack.unpackb(
            data, ext_hook=_EXT_HOOKS[0], raw=False, use_list=False, strict_map_key=False
        )
    except (ProtocolError, WireSchemaError):
        raise
    except Exception as exc:  # msgpack raises several unrelated classes on junk
        raise ProtocolError(f"undecodable msgpack: {exc.__class__.__name__}: {exc}") from None


def check(value: Any, hint: Any, what: str) -> None:
    """Raise ProtocolError unless ``value`` matches ``hint`` (for handler arguments)."""
    if not _conforms(value, hint):
        raise ProtocolError(f"{what}: wrong type {type(value).__name__}")


# --------------------------------------------------------------------- envelopes


def encode_envelope(env: Envelope) -> bytes:
    """The body of one frame for ``env``."""
    if isinstance(env, Request):
        return pack((REQUEST, env.request_id, env.method, env.sender, env.args))
    if isinstance(env, Reply):
        return pack((REPLY, env.request_id, env.error, env.result))
    if isinstance(env, Handshake):
        return pack((HANDSHAKE, env.step, env.sender, env.args))
    return pack((NOTIFY, env.method, env.sender, env.args))


def decode_envelope(body: bytes) -> Envelope:
    """Parse one frame body; raise ProtocolError if it is not a valid envelope."""
    msg = unpack(body)
    if not isinstance(msg, tuple) or not msg:
        raise ProtocolError("frame is not a msgpack array")
    kind = msg[0]
    if type(kind) is not int:
        raise ProtocolError(f"envelope kind {kind!r} is not an int")
    if kind == REQUEST and len(msg) == 5:
        _, rid, method, sender, args = msg
        if type(rid) is int and type(method) is str and type(sender) is str:
            return Request(rid, method, sender, args)
    elif kind == REPLY and len(msg) == 4:
        _, rid, error, result = msg
        if type(rid) is int and (
            error is None
            or (
                isinstance(error, tuple)
                and len(error) == 2
                and type(error[0]) is str
                and type(error[1]) is str
            )
        ):
            return Reply(rid, error, result)
    elif kind == NOTIFY and len(msg) == 4:
        _, method, sender, args = msg
        if type(method) is str and type(sender) is str:
            return Notify(method, sender, args)
    elif kind == HANDSHAKE and len(msg) == 4:
        _, step, sender, args = msg
        if type(step) is str and type(sender) is str:
            return Handshake(step, sender, args)
    raise ProtocolError(f"malformed envelope of kind {kind!r} with {len(msg)} items")


# ------------------------------------------------------------------------ heads


@dataclass(frozen=True, slots=True)
class Head:
    """What an envelope is, read without decoding its arguments or result.

    ``request_id`` is set for requests and replies, ``method`` and ``sender``
    for requests, notifies and handshakes (a handshake's step is its
    method). ``tag`` is the type code of the arguments of a request or notify
    when they are a typed message (a Raft message's tag), else None.
    """

    kind: int  # REQUEST, REPLY, NOTIFY or HANDSHAKE
    request_id: int | None = None
    method: str | None = None
    sender: str | None = None
    tag: int | None = None


def read_head(body: bytes) -> Head | None:
    """The head of the envelope in ``body``, or None if ``body`` starts no envelope.

    The one reader of the envelope layout short of :func:`decode_envelope`.
    It never decodes the arguments or the result, so it needs no message
    class registered and costs nothing for the payload: a fault proxy uses it
    to act per message on frames it forwards untouched, and a client to find
    the request id of a reply too large to decode. ``body`` may be cut short
    after the head (a reply's first :data:`~kvraft.rpc.framing.OVERSIZE_HEAD_BYTES`
    bytes suffice for its request id). Never raises: junk is None.
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        size = unpacker.read_array_header()
        kind = unpacker.unpack() if size else None
        if type(kind) is not int:
            return None
        if kind == REQUEST and size == 5:
            rid, method, sender = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
            if type(rid) is int and type(method) is str and type(sender) is str:
                return Head(REQUEST, rid, method, sender, _ext_code(body, unpacker.tell()))
        elif kind == NOTIFY and size == 4:
            method, sender = unpacker.unpack(), unpacker.unpack()
            if type(method) is str and type(sender) is str:
                return Head(NOTIFY, None, method, sender, _ext_code(body, unpacker.tell()))
        elif kind == REPLY and size == 4:
            rid = unpacker.unpack()
            if type(rid) is int:
                return Head(REPLY, rid)
        elif kind == HANDSHAKE and size == 4:
            step, sender = unpacker.unpack(), unpacker.unpack()
            if type(step) is str and type(sender) is str:
                return Head(HANDSHAKE, None, step, sender)
    except Exception:  # msgpack raises several unrelated classes on junk
        return None
    return None


# Where an extension value's type code sits, by its msgpack format byte:
# fixext 1/2/4/8/16 right after the format byte; ext 8/16/32 after a length.
_EXT_CODE_OFFSET = {0xD4: 1, 0xD5: 1, 0xD6: 1, 0xD7: 1, 0xD8: 1, 0xC7: 2, 0xC8: 3, 0xC9: 5}


def _ext_code(body: bytes, pos: int) -> int | None:
    """The type code of the extension value at ``body[pos]``, else None (read, not copied)."""
    offset = _EXT_CODE_OFFSET.get(body[pos]) if pos < len(body) else None
    if offset is None or pos + offset >= len(body):
        return None
    return int.from_bytes(body[pos + offset : pos + offset + 1], "big", signed=True)


def reply_id_of_head(head: bytes) -> int:
    """The request id of a reply frame, from the first bytes of its body.

    For a reply too large to decode. ProtocolError if ``head`` does not
    start a reply.
    """
    parsed = read_head(head)
    if parsed is None or parsed.kind != REPLY:
        raise ProtocolError("oversize frame does not start a reply")
    assert parsed.request_id is not None
    return parsed.request_id


# ------------------------------------------------------------------ registration

# Raft's and the key-value service's messages, registered here rather than
# where they are defined (see wire_types): whoever imports the codec can decode them.
for _tag, _cls in WIRE_TYPES:
    wire_message(_tag)(_cls)
