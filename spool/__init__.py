"""Spool's composition root: wiring, embedded dev servers and the `spool` command."""
