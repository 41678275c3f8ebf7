"""The RPC layer: length-prefixed msgpack frames over TCP, for clients and peers alike.

Layering, bottom up: ``framing`` (bytes <-> frame bodies, no I/O),
``wire_types`` (the table of typed messages and their tags), ``codec`` (frame
bodies <-> envelopes and typed messages, the one place that encodes; no I/O),
``transport`` (asyncio server and client connections, timeouts, reconnects).

This package imports none of its modules itself: ``import kvraft.rpc.codec``
must not load asyncio or sockets, so that what only encodes (the server's log
commands, tests of the codec) does not pay for, or depend on, the transport.
Import each name from its module.
"""
