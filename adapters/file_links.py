"""Links to a completed job's files that any HTTP client can open, whatever the storage.

An S3-compatible storage (S3, R2, MinIO, GCS, OSS) presigns its own GET URLs, Azure Blob signs
a SAS; a local folder serves nothing, so its files get a Spool link instead:
`<SPOOL_PUBLIC_URL>/files/<job_id>/<kind>?expires=<unix time>&signature=<hex>`, served by the
API without an API key. The signature is an HMAC (SHA-256) over the job id, the object's key and
the expiry, keyed by a key derived from the server secret: it cannot be moved to another job or
file, nor made to last longer, and it stops working at its expiry.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, urlencode

from spool.adapters.storage import LocalStorage, ObjectStorage
from spool.domain import previews

LINK_SECONDS = 24 * 3600
"""How long a link lives: presigned, SAS or Spool alike."""

KINDS = ("media", "subtitle", "thumbnail", "hls", *previews.KINDS)
"""The files of a job a link can name."""

_LABEL = b"spool file links v1"


def link_key(secret: str) -> bytes:
    """The key links are signed with, derived from the server secret (so it differs from the
    JWT and encryption keys derived from the same secret)."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def signature(key: bytes, job_id: str, object_key: str, expires: int) -> str:
    """The hex HMAC of one link: over the job, the object's key and the expiry."""
    message = f"{job_id}\n{object_key}\n{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def spool_link(
    public_url: str, key: bytes, *, job_id: str, kind: str, object_key: str, expires: int
) -> str:
    """A signed Spool link to one of a job's files, valid until `expires` (unix seconds)."""
    query = urlencode(
        {"expires": str(expires), "signature": signature(key, job_id, object_key, expires)}
    )
    return f"{public_url.rstrip('/')}/files/{quote(job_id, safe='')}/{kind}?{query}"


def link_is_valid(
    key: bytes, *, job_id: str, object_key: str, expires: int, given: str, now: float
) -> bool:
    """Whether `given` signs this job's object until `expires`, and `now` is before then."""
    expected = signature(key, job_id, object_key, expires)
    return hmac.compare_digest(expected, given) and now < expires


async def file_link(
    storage: ObjectStorage,
    *,
    job_id: str,
    kind: str,
    object_key: str,
    public_url: str,
    key: bytes,
    now: float,
    seconds: int = LINK_SECONDS,
) -> str:
    """An HTTP(S) link to `object_key` for `seconds` from `now`: the storage's own presigned
    (or SAS) URL, or a Spool link for a local folder. `StorageError` from the storage."""
    if isinstance(storage, LocalStorage):
        expires = int(now) + seconds
        return spool_link(
            public_url, key, job_id=job_id, kind=kind, object_key=object_key, expires=expires
        )
    return await storage.presigned_url(object_key, seconds)
