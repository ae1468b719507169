"""Why jobs fail: a failure message with what differs between jobs stripped out, and the group
it puts a job in.

Two jobs that failed for the same reason say so in messages that differ only in their URL,
host, ids, sizes, times and file names ("HTTP Error 403 for https://a.example/x/123"). The
normalised message replaces each of those with a placeholder (`<url>`, `<host>`, `<id>`,
`<n>`, `<file>`), so such jobs share one group: `(error_type, normalised message)`, named by a
short hash (`group_id`) that URLs and filters can carry. Pure: the jobs read model stores each
failed job's group id (adapters/read_models/jobs.py), and a replay derives it again.
"""

from __future__ import annotations

import hashlib
import re

MAX_MESSAGE = 500
"""Characters of a normalised message kept: a group is named by how a message begins."""

# Order matters: a URL holds hosts, ids and numbers, a quoted name may hold anything.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I), "<url>"),
    (re.compile("'[^'\n]{1,300}'|\"[^\"\n]{1,300}\"|\u2018[^\u2019\n]{1,300}\u2019"), "<file>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<host>"),
    (re.compile(r"\[[0-9a-f:]*:[0-9a-f:]+\](?::\d+)?", re.I), "<host>"),
    (
        re.compile(
            r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
            r"(?:[a-z]{2,63}|xn--[a-z0-9-]+)(?::\d+)?\b(?![.(])",
            re.I,
        ),
        "<host>",
    ),
    (
        re.compile(
            r"\b\d+(?:\.\d+)?\s*(?:[kmgt]i?b|bytes?|b|ms|s|sec(?:onds?)?|min(?:utes?)?|h|%)"
            r"(?![a-z])",
            re.I,
        ),
        "<n>",
    ),
    # A token of letters and digits both, 8 or more long: a hash, a video id, a key.
    (re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[a-z])[\w-]{8,}\b", re.I), "<id>"),
    (re.compile(r"\b\d{5,}\b"), "<id>"),
)
_SPACES = re.compile(r"\s+")


def normalise(message: str) -> str:
    """The message with hosts, URLs, ids, sizes, durations and quoted names made placeholders;
    what two jobs that failed the same way have in common.

    Short numbers that are not sizes or times stay: an HTTP status (403, 404) is what tells one
    failure from another.
    """
    text = message
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()[:MAX_MESSAGE]


def group_id(error_type: str, message: str) -> str:
    """The short stable id of the group of `(error_type, normalise(message))`: 12 hex digits
    of its SHA-256, safe in a URL."""
    key = f"{error_type}\x00{normalise(message)}".encode()
    return hashlib.sha256(key).hexdigest()[:12]
