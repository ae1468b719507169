"""What the redacting formatter takes out of a log line, and what it leaves alone."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spool.adapters.log_redaction import _PATTERNS, REDACTED, RedactingFormatter, redact, remember


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('1.2.3.4:5 - "WebSocket /ws?api_key=sk_abcdefghijklmnopqrstuvwxyz0123" 403', "sk_abc"),
        ("GET /media/j?x=1&token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrIn0.c2lnbmF0dXJl", "eyJ"),
        ("pool for postgresql://spool:hunter2-db@db:5432/spool failed", "hunter2-db"),
        ("redis://:redis-pass-123@r:6379/0 unreachable", "redis-pass-123"),
        ("storage s3://b/p?endpoint=http://h&access_key=AK&secret_key=wJalr/XUtn+K", "wJalr"),
        ("config {'secret_access_key': 'wJalr/XUtnFE', 'region': 'eu'}", "wJalr"),
        ('{"account_key":"bXlrZXk=","sas_token":"sv=2024&sig=abc"}', "bXlrZXk"),
        ("sent Authorization: Bearer sk_zzzzzzzzzzzzzzzzzzzzzzzz", "sk_zzz"),
        ("feed at /batch/b/feed.xml#feed_" + "f" * 43 + " moved", "feed_fff"),
        ("retrying with password=letmein01", "letmein01"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=f00d", "f00d"),
    ],
)
def test_a_secret_is_taken_out_of_the_line_wherever_it_stands(line: str, secret: str) -> None:
    redacted = redact(line)
    assert secret not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "line",
    [
        "spool is up: http://127.0.0.1:8081 (Swagger UI at /swagger)",
        "connected to postgresql://postgres@127.0.0.1:5432/postgres",
        "error: token expired: authenticate on a new socket",
        '{"path":"/jobs/3f2a/trace","status_code":200,"token_type":"Bearer"}',
        "job 3f2a: download of http://127.0.0.1:9000/clip.mp4?quality=high done",
    ],
)
def test_an_ordinary_line_is_left_as_it_is(line: str) -> None:
    assert redact(line) == line


def test_configured_secrets_and_exceptions_are_redacted_by_the_formatter() -> None:
    remember("a-configured-server-secret", "short")
    formatter = RedactingFormatter("%(message)s")
    try:
        raise RuntimeError("connecting with a-configured-server-secret failed")
    except RuntimeError as exc:
        record = logging.LogRecord(
            "spool", logging.ERROR, __file__, 1, "using %s", ("a-configured-server-secret",),
            (type(exc), exc, exc.__traceback__),
        )  # fmt: skip
    line = formatter.format(record)
    assert "a-configured-server-secret" not in line
    assert line.startswith(f"using {REDACTED}") and "RuntimeError" in line
    assert redact("a short word") == "a short word"  # too short to be replaced verbatim


def _every_pattern_applied(text: str) -> str:
    """`redact` without its shortcuts: every pattern run on every line."""
    for _, pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# The four letters IGNORECASE takes for ASCII ones (dotless and dotted i, long s, Kelvin sign)
# among the pieces of secrets and of what stands around them.
_PIECES = st.sampled_from(
    [
        "sk_", "abcdefghijklmnopqrstuvwxyz", "eyJ", "eyJhbGciOiJIUzI1NiJ9", ".", "://", "@", ":",
        "=", "&", "?", ";", "'", '"', " ", "Bearer ", "https", "user", "PassWord", "api_key",
        "x-api-key", "Authorization", "TOKEN", "sig", "Secret_Key",
        "\u0131", "\u0130", "\u017f", "\u212a", "s\u0131g", "\u017fecret", "to\u212aen",
        "hunter2", "/path",
    ]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_redaction_finds_what_every_pattern_run_on_every_line_finds(text: str) -> None:
    assert redact(text) == _every_pattern_applied(text)
