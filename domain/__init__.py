"""Spool's domain: events, pure aggregates and errors. Imports nothing of ours and does no I/O."""
