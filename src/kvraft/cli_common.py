"""What every ``kvraft`` subcommand ends with: the exit codes and the one-line failure.

Its own module so that the command modules (:mod:`kvraft.cli_servers`,
:mod:`kvraft.cli_clients`) and the group that gathers them (:mod:`kvraft.cli`)
share them without importing each other.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from kvraft.errors import one_line

EXIT_OK, EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    """Print ``kvraft: message`` on stderr and exit with ``code``."""
    click.echo(f"kvraft: {one_line(message)}", err=True)
    sys.exit(code)
