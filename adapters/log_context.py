"""What a log record is about, beyond its message: the request, job, task and node at hand.

Each is a context variable, set where the work starts (the request middleware, a node running
a unit or a task) and seen by every record logged while that work runs, whoever logs it: an
asyncio task copies the context it was created in, so what a request or a unit starts carries
its ids along. `adapters/log_format.py` puts them in each line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)
TASK_ID: ContextVar[str | None] = ContextVar("task_id", default=None)
NODE_ID: ContextVar[str | None] = ContextVar("node_id", default=None)

FIELDS: tuple[ContextVar[str | None], ...] = (REQUEST_ID, JOB_ID, TASK_ID, NODE_ID)
"""In the order a line shows them."""


def current() -> dict[str, str]:
    """The ids known where this is called, by name (`request_id`, `job_id`, ...)."""
    known: dict[str, str] = {}
    for var in FIELDS:
        value = var.get()
        if value is not None:
            known[var.name] = value
    return known


@contextmanager
def bound(
    *,
    request_id: str | None = None,
    job_id: str | None = None,
    task_id: str | None = None,
    node_id: str | None = None,
) -> Iterator[None]:
    """The given ids on every record logged inside the block (and in tasks it starts)."""
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = []
    for var, value in (
        (REQUEST_ID, request_id),
        (JOB_ID, job_id),
        (TASK_ID, task_id),
        (NODE_ID, node_id),
    ):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
