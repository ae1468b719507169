"""`python -m spool` is the `spool` command."""

from spool.cli import main

main()
