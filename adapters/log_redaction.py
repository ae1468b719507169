"""Log lines with their secrets taken out: API keys, tokens, passwords, storage credentials.

Every line a Spool process writes is redacted by its formatter (adapters/log_format.py),
whoever logged it: uvicorn prints a websocket's path with its query (`/ws?api_key=...`), a
library may print a URL with a password in it, an exception may quote what it was given. What
is recognised by its shape (`sk_...` keys, JWTs, `user:password@` in URLs, secret-named query
parameters, headers and fields) is replaced wherever it stands, and so is every value a process
was configured with and named secret (`remember`).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_SECRET_NAMES = (
    r"api[_-]?key|x-api-key|access[_-]?token|refresh[_-]?token|token|jwt|auth|authorization"
    r"|password|passwd|pwd|secret|secret[_-]?key|client[_-]?secret|secret[_-]?access[_-]?key"
    r"|aws[_-]?secret[_-]?access[_-]?key|access[_-]?key[_-]?secret|account[_-]?key"
    r"|sas[_-]?token|session[_-]?token|security[_-]?token|private[_-]?key|credential"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig"
)

_NAME_STEMS = ("key", "token", "jwt", "auth", "pass", "pwd", "secret", "credential", "sig")
"""Each name of `_SECRET_NAMES` holds one of these: a line holding none has no named secret."""

_CASE_FOLDS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
"""The letters `re.IGNORECASE` takes for an ASCII one that `str.lower` does not turn into it."""

_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    # Spool's API keys (`sk_` and 43 URL-safe characters), wherever they stand.
    (("sk_",), re.compile(r"\bsk_[A-Za-z0-9_-]{16,}"), "sk_" + REDACTED),
    # Podcast feed tokens (`feed_` and 43 URL-safe characters: domain/feed.py).
    (("feed_",), re.compile(r"\bfeed_[A-Za-z0-9_-]{40,}"), "feed_" + REDACTED),
    # JWTs: three base64url parts, the first a JSON header (`eyJ` is `{"`).
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # A password in a URL: scheme://user:password@host.
    (
        ("://",),
        re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@", re.IGNORECASE),
        r"\1" + REDACTED + "@",
    ),
    # `?token=...` and the like in a query string.
    (
        _NAME_STEMS,
        re.compile(rf"([?&;](?:{_SECRET_NAMES})=)[^&\s\"'#]*", re.IGNORECASE),
        r"\1" + REDACTED,
    ),
    # `Authorization: Bearer ...`, `x-api-key: ...`.
    (
        _NAME_STEMS,
        re.compile(
            r"((?:authorization|x-api-key)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)[^\s\"',}]+",
            re.IGNORECASE,
        ),
        r"\1" + REDACTED,
    ),
    # `"secret_access_key": "..."`, `password=...`, `account_key='...'` in reprs and JSON.
    (
        _NAME_STEMS,
        re.compile(
            rf"([\"']?\b(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*)([\"'])(?:(?!\2).)*\2", re.IGNORECASE
        ),
        r"\1\2" + REDACTED + r"\2",
    ),
    # `password=...` unquoted, as in `key=value` messages.
    (
        _NAME_STEMS,
        re.compile(rf"(\b(?:{_SECRET_NAMES})\s*=\s*)(?![\"'\[])[^\s&,;)}}\]]+", re.IGNORECASE),
        r"\1" + REDACTED,
    ),
)

_known: set[str] = set()

_SHORTEST_REMEMBERED = 8
"""Shorter configured values are not replaced verbatim: they would blank out ordinary words."""


def remember(*secrets: str | None) -> None:
    """Take these configured values out of every line this process logs from now on."""
    _known.update(s for s in secrets if s and len(s) >= _SHORTEST_REMEMBERED)


def redact(text: str) -> str:
    """`text` with every secret it holds replaced by `[redacted]`."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    # Most lines hold no secret: a pattern runs only on a line holding what it needs (its
    # hints, in a lower-cased copy), and replaces only what a search found (a `sub` with a group
    # in its replacement costs ten times a search finding nothing). Without this, redaction was
    # most of the cost of a log line.
    folded = text.translate(_CASE_FOLDS).lower()
    for hints, pattern, replacement in _PATTERNS:
        if any(hint in folded for hint in hints) and pattern.search(text):
            text = pattern.sub(replacement, text)
            folded = text.translate(_CASE_FOLDS).lower()
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose lines (message, exception and stack included) are `redact`ed."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
