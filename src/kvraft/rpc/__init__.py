"""The RPC layer: length-prefixed msgpack frames over TCP, for clients and peers alike.

Layering, bottom up: ``framing`` (bytes <-> frame bodies, no I/O), ``codec``
(frame bodies <-> envelopes and typed messages, the one place that encodes),
``transport`` (asyncio server and client connections, timeouts, reconnects).
"""

from kvraft.rpc.codec import (
    Notify,
    Reply,
    Request,
    client_sender,
    peer_sender,
    sender_peer_id,
    wire_message,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from kvraft.rpc.transport import (
    Handler,
    RpcClient,
    RpcServer,
    UnknownMethod,
    install_event_loop_policy,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FrameDecoder",
    "Handler",
    "Notify",
    "Reply",
    "Request",
    "RpcClient",
    "RpcServer",
    "UnknownMethod",
    "client_sender",
    "frame",
    "install_event_loop_policy",
    "peer_sender",
    "sender_peer_id",
    "wire_message",
]
