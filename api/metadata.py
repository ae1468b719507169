"""`POST /metadata` (seed 002): what a URL holds, read without downloading the media.

Same key and error shape as the job API (`x-api-key`, `{"error": ...}`) and the same URL guard
as downloads. A URL that cannot be read answers 400 with yt-dlp's reason; a source that does not
answer within `probe_timeout` answers 504, and an account past its share of probes 429
(api/probes.py).
"""

from __future__ import annotations

import msgspec
from litestar import Controller, post

from spool.adapters import metadata
from spool.adapters.ssrf import UrlGuard
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.probes import run_probe
from spool.api.services import Services
from spool.domain.source_data import made_safe

_MAX_URL = 4096


class MetadataRequest(msgspec.Struct, forbid_unknown_fields=True):
    url: str


def _valid_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        raise JobApiError(status_code=400, detail="url is required")
    if len(url) > _MAX_URL:
        raise JobApiError(status_code=400, detail=f"URL too long (max {_MAX_URL} characters)")
    return url


class MetadataController(Controller):
    path = "/metadata"
    tags = ["metadata"]

    @post("/", status_code=200)
    async def extract_metadata(
        self,
        services: Services,
        data: MetadataRequest,
        principal: Principal,
    ) -> metadata.MediaMetadata:
        """Extract title, duration, formats, thumbnails and subtitles without downloading.

        Formats list `format_id`, `ext` (container), `vcodec` / `acodec` ("none" means the
        format has no such track, null that the source does not say), `width`, `height`,
        `resolution`, `fps`, `tbr` (kbit/s), `filesize` (bytes, when the source says) and
        `filesize_approx`. A playlist or feed answers `is_playlist: true` and `entries` (its
        item count). Of a direct media file, FFmpeg reads `duration`, the codecs (FFmpeg's
        names), `width` / `height`, `fps` and the whole file's `tbr` from at most 8 MiB of it,
        fetched through the URL guard; what it cannot read in time stays null.

        400 with the reason for a refused, unreachable or unsupported URL; 504 when the source
        does not answer within the limit; 429 with `Retry-After` while the account already has
        its share of sources being read.
        """
        url = _valid_url(data.url)
        guard: UrlGuard = services.guard
        try:
            # The source wrote it: a lone surrogate in a title would fail the answer's encoding.
            return made_safe(
                await run_probe(
                    services,
                    principal.account_id,
                    lambda probe: metadata.extract(url, guard=guard, probe=probe),
                )
            )
        except metadata.MetadataFailed as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
