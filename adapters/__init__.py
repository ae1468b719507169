"""Spool's adapters to the outside world: Postgres, Redis, storage, media tools, the machine."""
