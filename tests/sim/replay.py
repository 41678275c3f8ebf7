"""Replay one simulator seed, with the operator log of every node.

    .venv/bin/python -m tests.sim.replay --seed 1234 --nodes 5 [--quiet | --debug]

Run from the repository root. Exits 1 and prints the violation if the seed fails.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .planted import PLANTED
from .simulator import Simulation, Violation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--safety-ticks", type=int, default=None)
    parser.add_argument("--planted", choices=sorted(PLANTED), help="a core with a planted bug")
    parser.add_argument("--quiet", action="store_true", help="no Raft log lines")
    parser.add_argument("--debug", action="store_true", help="debug log lines too")
    args = parser.parse_args(argv)
    kwargs = {} if args.safety_ticks is None else {"safety_ticks": args.safety_ticks}
    simulation = Simulation(args.seed, args.nodes, planted=args.planted, **kwargs)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.debug else logging.INFO
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("t%(tick)-4s %(message)s"))
    handler.addFilter(lambda record: setattr(record, "tick", simulation.now) or True)
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
