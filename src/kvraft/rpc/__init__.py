"""The RPC layer: length-prefixed msgpack frames over TCP, for clients and peers alike.

Layering, bottom up; the first four and ``peer_auth``/``admission`` do no I/O:

- ``framing``: bytes <-> frame bodies, bounded before anything is buffered;
- ``wire_types``: the table of typed messages (Raft's, the key-value
  service's) and their tags;
- ``codec``: frame bodies <-> envelopes and typed messages, the one place that
  encodes, and ``read_head`` for what a frame is without decoding it;
- ``wire_errors``: an exception <-> the ``[code, message]`` of an error reply;
- ``coalescer``: one write per event-loop iteration for all the frames of it;
- ``peer_auth``: the peer handshake's transcript and MACs (pure), and
  ``admission``: the connection bounds a server enforces (pure);
- ``server`` (:class:`~kvraft.rpc.server.RpcServer` and its ``Handler``) and
  ``client`` (:class:`~kvraft.rpc.client.RpcClient`): the asyncio ends of a
  connection: pipelining, timeouts, reconnects, flow control;
- ``event_loop``: uvloop when installed.

This package imports none of its modules itself: ``import kvraft.rpc.codec``
must not load asyncio or sockets, so that what only encodes (the server's log
commands, tests of the codec) does not pay for, or depend on, the transport.
Import each name from its module.
"""
