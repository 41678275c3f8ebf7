"""A lock holder or election candidate in its own process, for tests that SIGKILL it.

    python -m tests.cluster.lease_holder lock|campaign SERVERS NAME TTL [VALUE]

Takes the lock (or campaigns until it leads), prints one line, ``held TOKEN``
or ``leading REVISION``, then keeps its lease alive until it is killed.
"""

from __future__ import annotations

import sys
import time

from kvraft import Client, Lock
from kvraft.client.election import Election


def main(argv: list[str]) -> int:
    what, servers, name, ttl = argv[0], argv[1].split(","), argv[2], int(argv[3])
    client = Client(servers, deadline=30.0, call_timeout_s=0.5)
    if what == "lock":
        token = Lock(client, name, ttl=ttl).acquire()
        print(f"held {token}", flush=True)
    else:
        revision = Election(client, name, ttl=ttl).campaign(argv[4])
        print(f"leading {revision}", flush=True)
    while True:  # the lease is renewed on the client's loop thread until the kill
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
