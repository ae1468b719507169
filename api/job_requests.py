"""The body of `POST /jobs` and its validation into the options a job is created with.

`CreateJobBody` is the job's URL, the options of `domain.job_options.AskedOptions` (embedded,
so every option the domain declares is a body field) and what only the request carries. A wrong
JSON type (`"video_quality": "23"`) is msgspec's to refuse, while a wrong value of the right type
(`"format": "avi"`) reaches `domain.job_options.resolve`, which answers with our own documented
message. Every refusal is a `JobApiError` with status 400, which the job API renders as
`{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from spool.api.errors import JobApiError
from spool.domain import job_options
from spool.domain.errors import InvalidCommand
from spool.domain.job_labels import check_labels
from spool.domain.job_options import AskedOptions, InvalidOption, JobOptions

__all__ = [
    "CreateJobBody",
    "ValidJob",
    "decode_create_job_body",
    "decode_strictly",
    "validate_create_job",
    "validate_filename",
    "validate_folder",
]


class CreateJobBody(AskedOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /jobs`: every documented field; only `url` is required.

    The options are `AskedOptions`' fields. Unknown fields are refused: `"fromat": "mkv"`
    ignored would quietly deliver an mp4.
    """

    url: str
    paused: bool = False
    storage: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    """`key=value` tags to find the job by (domain/job_labels.py has the bounds)."""


class ValidJob(msgspec.Struct, frozen=True):
    """A create request that passed validation: the URL to fetch, the options to store and the
    job's labels."""

    url: str
    options: JobOptions
    labels: dict[str, str] = msgspec.field(default_factory=dict)


def _bad(detail: str) -> JobApiError:
    return JobApiError(status_code=400, detail=detail)


_decoder = msgspec.json.Decoder(CreateJobBody)
B = TypeVar("B")


def decode_strictly(decoder: msgspec.json.Decoder[B], raw: bytes) -> B:
    """Decode a raw body strictly, refusing wrong JSON types with a 400 naming the field, in
    the `message (field: key)` form the job API uses for other validation errors."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        field = path.rstrip("`")
        raise _bad(f"{message} (field: {field})" if field else message) from None
    except msgspec.DecodeError as exc:
        raise _bad(f"Invalid JSON body: {exc}") from None


def decode_create_job_body(raw: bytes) -> CreateJobBody:
    """Decode a raw `POST /jobs` body strictly, refusing wrong JSON types with a 400.

    Why this exists: a Litestar `data: CreateJobBody` parameter converts in msgspec's lax mode,
    which turns `"23"` into 23 and `"true"` or `1` into `True`. Decoding the raw body here keeps
    the documented types exact.

    Raises:
        JobApiError: 400, e.g. `Expected `int | null`, got `str` (field: video_quality)`.
    """
    return decode_strictly(_decoder, raw)


def validate_filename(filename: str) -> str:
    """A user's `filename` (no extension), checked by `domain.job_options.check_filename`.

    Raises:
        JobApiError: 400 naming the field and the character or name that is not allowed.
    """
    try:
        return job_options.check_filename(filename)
    except InvalidOption as exc:
        raise _bad(str(exc)) from None


def validate_folder(folder: str) -> str:
    """A user's `folder` (a storage prefix), checked by `domain.job_options.check_folder`.

    Raises:
        JobApiError: 400 naming the field and the character or name that is not allowed.
    """
    try:
        return job_options.check_folder(folder)
    except InvalidOption as exc:
        raise _bad(str(exc)) from None


def validate_create_job(body: CreateJobBody) -> ValidJob:
    """Check a `POST /jobs` body and build the URL and options to store.

    The first problem is reported: the URL, then what the pipeline cannot honour (contradictory
    options, an empty `storage`), then each option in `domain.job_options.resolve`'s order.

    Raises:
        JobApiError: 400 with the reason.
    """
    try:
        url = job_options.check_url(body.url)
        job_options.refuse_contradictions(body)
        # The storage object's contents are checked (and probed) by the job API itself.
        if body.storage is not None and not body.storage:
            raise InvalidOption("storage must name a provider and its settings")
        options = job_options.resolve(body)
        labels = check_labels(body.labels or {})
    except (InvalidOption, InvalidCommand) as exc:
        raise _bad(str(exc)) from None
    return ValidJob(url=url, options=options, labels=labels)
