"""Spool's HTTP surfaces, served by Litestar."""
