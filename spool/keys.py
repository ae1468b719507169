"""Issuing API keys from the command line and at start: see adapters/key_store.py."""

from __future__ import annotations

from spool.adapters.key_store import IssuedKey, ensure_admin_key, ensure_first_key, issue, mint

__all__ = ["IssuedKey", "ensure_admin_key", "ensure_first_key", "issue", "mint"]
