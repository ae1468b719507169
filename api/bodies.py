"""What a request body may be, checked once for every route before its handler runs.

Every body Spool reads is JSON, so a form or a file is a 415; a route that reads no body
refuses one that names fields (a 400 naming the first), rather than ignoring what the caller
meant to say. Both answer in the route's surface shape through its own error handler.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, ValidationException

JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")
"""Content types a JSON body may be sent under: JSON's own, plus what `curl -d` and a browser's
`fetch` with a string body send when the caller names none (the body is still parsed as JSON)."""

READS_BODY = {"reads_body": True}
"""`opt` of a handler that decodes `await request.body()` itself instead of taking `data`."""

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _takes_body(request: Request[Any, Any, Any]) -> bool:
    handler = request.route_handler
    return "data" in handler.parsed_fn_signature.parameters or bool(handler.opt.get("reads_body"))


def _no_body_here(field: str | None) -> ValidationException:
    if field is None:
        message = "This request takes no body"
        return ValidationException(detail=message, extra=[{"key": "body", "message": message}])
    message = f"Unknown field `{field}`: this request takes no body"
    return ValidationException(detail=message, extra=[{"key": field, "message": message}])


async def check_body(request: Request[Any, Any, Any]) -> None:
    """415 for a body that is not JSON; 400 naming the field for one a body-less route got."""
    if request.method not in _WITH_BODY:
        return
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return
    given = headers.get("content-type")
    if given is not None:
        media_type = given.split(";", 1)[0].strip().lower()
        if media_type not in JSON_TYPES and not media_type.endswith("+json"):
            named = media_type or "an empty content type"
            raise HTTPException(
                status_code=415, detail=f"Send the body as application/json, not {named}"
            )
    if _takes_body(request):
        return
    raw = (await request.body()).strip()
    if not raw:
        return
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise _no_body_here(None) from None
    if decoded == {}:
        return
    raise _no_body_here(next(iter(decoded)) if isinstance(decoded, dict) else None)
