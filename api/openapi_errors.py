"""The error answers of every operation in the OpenAPI document, each in its surface's shape.

Litestar documents only a 400 in its own `{"status_code", "detail"}` shape, which no Spool
surface answers. This rewrites each operation's 4xx from what its route can give (a body, path
parameters, a key, a rate limit) and the shape its path's surface answers in (api/surfaces.py),
so a client generator and the schemathesis run in tests/test_hostile_input.py (which checks
every status it gets is listed) see the real ones.
"""

from __future__ import annotations

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)

from spool.api.envelope import ERROR_CODES
from spool.api.surfaces import Surface, surface_of

PUBLIC_PATHS = ("/health", "/files/")
"""Answered without an API key (`/files` takes a signed link; a bad one is a 403)."""

QUOTA_PATHS = frozenset({"/jobs", "/jobs/bulk"})
"""Job creation past an account's rate quota answers 429 with `Retry-After`."""

SOURCE_PATHS = frozenset({"/jobs", "/metadata"})
"""A POST here asks a source on the internet, which may not answer in time (504)."""

_WITH_BODY = frozenset({"post", "put", "patch", "delete"})

_STRING = Schema(type=OpenAPIType.STRING)

SCHEMAS: dict[Surface, tuple[str, Schema]] = {
    Surface.JOBS: (
        "JobApiError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["error"],
            properties={"error": _STRING},
            description='The job API\'s error: `{"error": "..."}` (a quota refusal adds '
            "`quota`, `limit`, `used`).",
        ),
    ),
    Surface.CLUSTER: (
        "ClusterApiError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["status", "message", "error_code", "timestamp", "request_id"],
            properties={
                "status": Schema(type=OpenAPIType.STRING, enum=["error"]),
                "message": _STRING,
                "error_code": Schema(type=OpenAPIType.STRING, enum=sorted(ERROR_CODES)),
                "error_details": Schema(
                    one_of=[Schema(type=OpenAPIType.OBJECT), Schema(type=OpenAPIType.NULL)]
                ),
                "timestamp": _STRING,
                "request_id": _STRING,
            },
            description="The `/api/v1` error envelope; `error_details.field` names a bad field.",
        ),
    ),
    Surface.MESSAGE: (
        "MessageError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["message"],
            properties={"message": _STRING},
            description='The viewer API\'s and the health token\'s error: `{"message": "..."}`.',
        ),
    ),
}

DESCRIPTIONS = {
    400: "Invalid input: a parameter or body field, named in the answer",
    401: "No API key, or one that is unknown, revoked or expired",
    403: "The key's account or scope may not do this",
    404: "Nothing of this id that the key's account may see",
    413: "The body is larger than the limit (10 MB)",
    409: "The thing is not in a state that allows this (e.g. a job not completed yet), or it "
    "changed while the request ran",
    415: "The body is not JSON",
    429: "Too many requests: wait for `Retry-After` seconds",
    502: "The storage refused the request",
    503: "The database is unreachable: try again after `Retry-After` seconds",
    504: "The source did not answer in time",
}


def _statuses(path: str, method: str, operation: Operation) -> list[int]:
    public = path.startswith(PUBLIC_PATHS)
    takes_body = method in _WITH_BODY
    statuses: list[int] = []
    if operation.parameters or operation.request_body or takes_body:
        statuses.append(400)
    if not public:
        statuses.append(401)
    if not public or path.startswith("/files/"):
        statuses.append(403)
    if "{" in path or method == "delete":  # a DELETE of what there is none of, too
        statuses.append(404)
    if takes_body or path.startswith("/media/"):
        statuses.append(409)
    if takes_body:
        statuses.extend((413, 415))
    if surface_of(path) is Surface.CLUSTER or (method == "post" and path in QUOTA_PATHS):
        statuses.append(429)
    if method == "delete" and path.startswith("/jobs/"):
        statuses.append(502)
    statuses.append(503)
    if method == "post" and path in SOURCE_PATHS:
        statuses.append(504)
    return statuses


def document_errors(openapi: OpenAPI) -> None:
    """Give every operation of `openapi` the errors it can answer, in its surface's shape."""
    assert openapi.components is not None
    schemas = openapi.components.schemas
    for name, schema in SCHEMAS.values():
        schemas[name] = schema
    for path, item in (openapi.paths or {}).items():
        surface = surface_of(path)
        ref = Reference(ref=f"#/components/schemas/{SCHEMAS[surface][0]}")
        for method in ("get", "put", "post", "delete", "patch", "head"):
            operation: Operation | None = getattr(item, method)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            for code in [c for c in responses if c.startswith("4")]:
                del responses[code]
            if path == "/health":
                # Degraded: the same report as a 200, which says which component is down.
                healthy = responses["200"]
                assert isinstance(healthy, OpenAPIResponse)
                responses["503"] = OpenAPIResponse(
                    description="A component is down", content=healthy.content
                )
                continue
            for status in _statuses(path, method, operation):
                responses[str(status)] = OpenAPIResponse(
                    description=DESCRIPTIONS[status],
                    # A HEAD answer has headers only.
                    content=None
                    if method == "head"
                    else {"application/json": OpenAPIMediaType(schema=ref)},
                )
            operation.responses = responses
