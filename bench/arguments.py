"""The command-line options every bench shares, spelled and defaulted once."""

from __future__ import annotations

import argparse
import os

DATABASE_URL = os.environ.get(
    "SPOOL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The PostgreSQL server benches create their databases on: `SPOOL_BENCH_DATABASE_URL`, else the
machine's server on loopback."""


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """`--database-url`: the server a bench creates (and drops) its own databases on."""
    parser.add_argument(
        "--database-url",
        default=DATABASE_URL,
        help="a PostgreSQL server to create the bench's databases on "
        "(default: $SPOOL_BENCH_DATABASE_URL, else %(default)s)",
    )
