"""What a request body may be, checked once for every route before its handler runs.

Every body Spool reads is JSON, so a form or a file is a 415. A route that reads a body gets a
JSON object holding its required fields: an empty body, one that is not JSON or not an object,
or one without a required field is a 400 naming the first required field (`url`), never the
framework's parameter name (`data`). That fault is kept on the request and answered in place of
the framework's own validation error (`in_place_of`), so authentication still answers first: a
caller without a key learns nothing about bodies. A route that reads no body refuses one that
names fields (a 400 naming the first), rather than ignoring what the caller meant to say. Each
answers in the route's surface shape through its own error handler.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import (
    ClientException,
    HTTPException,
    SerializationException,
    ValidationException,
)

JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")
"""Content types a JSON body may be sent under: JSON's own, plus what `curl -d` and a browser's
`fetch` with a string body send when the caller names none (the body is still parsed as JSON)."""


def reads_body(*required: str) -> dict[str, Any]:
    """`opt` of a handler that decodes `await request.body()` itself (or takes a plain `dict`):
    the fields its JSON object must hold, named when a body comes without them."""
    return {"reads_body": True, "required_fields": required}


READS_BODY = reads_body()
"""`opt` of a handler that decodes its body itself and requires no field."""

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _required_fields(request: Request[Any, Any, Any]) -> tuple[str, ...] | None:
    """The fields the route's body must hold; None for a route that reads no body."""
    handler = request.route_handler
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is not None:
        declared = handler.opt.get("required_fields")
        return tuple(declared) if declared is not None else _struct_required(data.annotation)
    if handler.opt.get("reads_body"):
        return tuple(handler.opt.get("required_fields", ()))
    return None


@functools.cache
def _struct_required(annotation: Any) -> tuple[str, ...]:
    """A body Struct's required fields, as the JSON names them; none for any other type."""
    if not (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)):
        return ()
    return tuple(f.encode_name for f in msgspec.structs.fields(annotation) if f.required)


def _listed(names: tuple[str, ...]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _not_an_object(problem: str, required: tuple[str, ...]) -> ValidationException:
    """400 for a body that is not a JSON object, naming what the object must hold."""
    if required:
        key, message = required[0], f"{problem}; send a JSON object with {_listed(required)}"
    else:
        key, message = "body", f"{problem}; send a JSON object"
    return ValidationException(detail=message, extra=[{"key": key, "message": message}])


def _missing(field: str) -> ValidationException:
    message = f"Object missing required field `{field}`"
    return ValidationException(detail=message, extra=[{"key": field, "message": message}])


_KINDS = {"[": "an array", '"': "a string", "n": "null", "t": "a boolean", "f": "a boolean"}


def _kind(raw: bytes) -> str:
    """What JSON value other than an object `raw` (stripped, valid JSON) holds."""
    return _KINDS.get(chr(raw[0]), "a number")


def _no_body_here(field: str | None) -> ValidationException:
    if field is None:
        message = "This request takes no body"
        return ValidationException(detail=message, extra=[{"key": "body", "message": message}])
    message = f"Unknown field `{field}`: this request takes no body"
    return ValidationException(detail=message, extra=[{"key": field, "message": message}])


async def check_body(request: Request[Any, Any, Any]) -> None:
    """415 for a body that is not JSON; 400 naming the field for one a body-less route got.

    A body that lacks a field its route requires (empty, not JSON, not an object, or without
    it) is kept as the request's `body_fault`, for the route's error handler to answer.
    """
    if request.method not in _WITH_BODY:
        return
    headers = request.headers
    empty = headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
    given = headers.get("content-type")
    if not empty and given is not None:
        media_type = given.split(";", 1)[0].strip().lower()
        if media_type not in JSON_TYPES and not media_type.endswith("+json"):
            named = media_type or "an empty content type"
            raise HTTPException(
                status_code=415, detail=f"Send the body as application/json, not {named}"
            )
    required = _required_fields(request)
    if required is None:
        await _refuse_fields(request, empty)
        return
    raw = b"" if empty else (await request.body()).strip()
    fault = _fault(raw, required)
    if fault is not None:
        request.state[_BODY_FAULT] = fault


_BODY_FAULT = "body_fault"


def _fault(raw: bytes, required: tuple[str, ...]) -> ValidationException | None:
    """What is wrong with a body that should be a JSON object holding `required`, if anything."""
    if not raw:
        return _not_an_object("The body is empty", required)
    try:
        fields = _top_level.decode(raw)
    except msgspec.ValidationError:
        return _not_an_object(f"The body is {_kind(raw)}, not an object", required)
    except msgspec.DecodeError as exc:
        reason = str(exc).removeprefix("JSON is malformed: ")
        return _not_an_object(f"The body is not JSON: {reason}", required)
    missing = next((f for f in required if f not in fields), None)
    return None if missing is None else _missing(missing)


_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
"""An object's fields, their values left undecoded: the handler decodes them (once)."""


def body_fault(request: Request[Any, Any, Any]) -> ValidationException | None:
    """The 400 naming the required field this request's body lacks; None for a sound body.

    A handler that decodes its body itself raises it once the caller is authenticated.
    """
    fault: ValidationException | None = request.state.get(_BODY_FAULT)
    return fault


def _framework_body_error(exc: Exception) -> bool:
    """Litestar's own refusal of a body: its validation error, or its JSON decode failure."""
    return isinstance(exc, ValidationException) or (
        isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException)
    )


def in_place_of(request: Request[Any, Any, Any], exc: Exception) -> Exception:
    """The error a surface renders for `exc`: the body's own fault in place of the framework's
    refusal of the whole body (which names its parameter, `data`, or nothing)."""
    if _framework_body_error(exc) and (fault := body_fault(request)) is not None:
        return fault
    return exc


async def _refuse_fields(request: Request[Any, Any, Any], empty: bool) -> None:
    """400 naming the first field of a body sent to a route that reads none."""
    if empty:
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
