"""Replay one simulator seed, with the operator log of every node.

    .venv/bin/python -m tests.sim.replay --seed 1234 --nodes 5 [--quiet | --debug]
    .venv/bin/python -m tests.sim.replay --driver node --seed 1234 --nodes 3
    .venv/bin/python -m tests.sim.replay --driver lease --seed 6 --planted no-failover-extension

``--driver core`` (the default) replays the RaftCore simulator, ``--driver
node`` the simulator of real RaftNodes (simulator.py, node_sim.py), ``--driver
lease`` that one with lease clients and the lease-safety check (lease_sim.py).

Run from the repository root. Exits 1 and prints the violation if the seed fails.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .lease_sim import LeaseSimulation
from .node_sim import NodeSimulation
from .planted import PLANTED, PLANTED_DRIVERS, PLANTED_KEEPERS
from .simulator import Simulation, Violation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--safety-ticks", type=int, default=None)
    parser.add_argument("--driver", choices=("core", "node", "lease"), default="core")
    parser.add_argument(
        "--planted",
        choices=sorted([*PLANTED, *PLANTED_DRIVERS, *PLANTED_KEEPERS]),
        help="a core (or, with --driver node, a driver; with --driver lease, a lease "
        "keeper) with a planted bug",
    )
    parser.add_argument(
        "--members", action="store_true", help="with membership changes (membership_sim.py)"
    )
    parser.add_argument("--quiet", action="store_true", help="no Raft log lines")
    parser.add_argument("--debug", action="store_true", help="debug log lines too")
    args = parser.parse_args(argv)
    kwargs = {} if args.safety_ticks is None else {"safety_ticks": args.safety_ticks}
    simulation: Simulation | NodeSimulation
    if (args.planted in PLANTED_KEEPERS) != (args.driver == "lease" and args.planted is not None):
        parser.error(f"--planted {args.planted} and --driver {args.driver} do not go together")
    if args.driver == "lease":
        lease_sim = LeaseSimulation(args.seed, args.nodes, planted=args.planted, **kwargs)
        simulation, now = lease_sim, lambda: lease_sim.ticks
    elif args.driver == "node":
        node_sim = NodeSimulation(args.seed, args.nodes, planted=args.planted, **kwargs)
        simulation, now = node_sim, lambda: node_sim.ticks
    else:
        if args.planted in PLANTED_DRIVERS:
            parser.error(f"--planted {args.planted} needs --driver node")
        core_sim = Simulation(
            args.seed, args.nodes, planted=args.planted, members=args.members, **kwargs
        )
        simulation, now = core_sim, lambda: core_sim.now
    level = logging.WARNING if args.quiet else logging.DEBUG if args.debug else logging.INFO
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("t%(tick)-4s %(message)s"))
    handler.addFilter(lambda record: setattr(record, "tick", now()) or True)
    logging.basicConfig(level=level, handlers=[handler])
    logging.raiseExceptions = False  # e.g. piped into `head`
    print(f"seed {args.seed}, {args.nodes} nodes: {simulation.profile}")
    try:
        result = simulation.run()
    except Violation as violation:
        print(f"VIOLATION: {violation}")
        return 1
    print(f"ok: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
