"""A job's labels: the user's own `key=value` tags, checked once here for every way in
(`POST /jobs`, `POST /jobs/bulk`, `PATCH /jobs/{id}`, a query's `label`)."""

from __future__ import annotations

import re

from spool.domain.errors import InvalidCommand

MAX_LABELS = 20
"""Labels one job may carry."""
MAX_KEY = 63
MAX_VALUE = 256

_KEY = re.compile(r"[a-z0-9](?:[a-z0-9_.\-/]*[a-z0-9])?")
"""Lower-case letters, digits, `_ . - /` inside: safe in a query string and a URL as they are."""


def check_key(key: str) -> str:
    """A label key as given, or InvalidCommand naming what is wrong with it."""
    if not 1 <= len(key) <= MAX_KEY or not _KEY.fullmatch(key):
        raise InvalidCommand(
            f"Label key {key[:MAX_KEY]!r} must be 1-{MAX_KEY} characters of a-z, 0-9, "
            "'_', '.', '-' or '/', starting and ending with a letter or digit"
        )
    return key


def check_value(key: str, value: str) -> str:
    """A label's value as given, or InvalidCommand: at most `MAX_VALUE` characters, no control
    characters."""
    if len(value) > MAX_VALUE or any(c < " " or c == "\x7f" for c in value):
        raise InvalidCommand(
            f"Label {key!r}: a value is at most {MAX_VALUE} characters, without control characters"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """A whole set of labels, each key and value checked and their number bounded."""
    if len(labels) > MAX_LABELS:
        raise InvalidCommand(f"A job carries at most {MAX_LABELS} labels")
    return {check_key(k): check_value(k, v) for k, v in labels.items()}


def changed(labels: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`labels` after `changes`: a key given a string is set to it, a key given None is
    removed, a key not named is kept (the PATCH semantics); checked as a whole."""
    after = dict(labels)
    for key, value in changes.items():
        check_key(key)
        if value is None:
            after.pop(key, None)
        else:
            after[key] = check_value(key, value)
    return check_labels(after)


def parse_pair(pair: str) -> tuple[str, str]:
    """`key=value` (a query's `label`), checked; InvalidCommand when it is not one."""
    key, sep, value = pair.partition("=")
    if not sep:
        raise InvalidCommand(f"label must be key=value, got {pair[:80]!r}")
    return check_key(key), check_value(key, value)
