"""Azure Blob Storage through its REST API (httpx), speaking the `ObjectStorage` protocol.

Why the REST API over httpx rather than `azure-storage-blob`: Spool needs six operations (Put
Blob, Put Block, Put Block List, Delete, Get Properties, List) plus a read-only SAS, httpx is
already a dependency, and the SDK would pull in azure-core and its own transport stack for
that. Authentication is SharedKey (an account key signs each request) or a SAS token the user
gives (appended to every URL).

Uploads above `block_threshold` go up as blocks (Put Block, one at a time, so a cancel takes
effect between blocks and memory use stays at one block) and are committed by Put Block List;
until that commit the blob does not exist, so a failed or cancelled upload leaves no object.
Azure discards uncommitted blocks by itself after a week; there is no "abort" call to make.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from spool.adapters.checksums import Sha256
from spool.adapters.guarded_http import guarded_client
from spool.adapters.ssrf import UrlGuard, UrlRefused
from spool.adapters.storage import (
    _PROBE_PREFIX,
    MAX_PRESIGN_SECONDS,
    READ_CHUNK,
    ObjectChanged,
    ObjectExists,
    ObjectInfo,
    StorageCancelled,
    StorageError,
    StoredObject,
    UploadProgress,
    _cancelled,
    _check_key,
    _content_type,
    _ProgressThrottle,
    range_header,
    refused_as_existing,
)

_OWNER = "spooljob"
"""The metadata name (`x-ms-meta-spooljob`) keeping a blob's job: Azure wants C# identifiers."""

API_VERSION = "2021-12-02"
"""The Blob service version requests ask for (Azure and Azurite both speak it)."""

MAX_BLOCKS = 50_000
MIN_BLOCK_SIZE = 1024 * 1024

_RETRYABLE_CODES = frozenset(
    {"InternalError", "OperationTimedOut", "ServerBusy", "ServiceUnavailable"}
)


class BlobStorage:
    """One container (and a prefix in it) of an Azure storage account."""

    def __init__(
        self,
        *,
        account_name: str,
        container: str,
        prefix: str = "",
        endpoint: str | None = None,
        account_key: str | None = None,
        sas_token: str | None = None,
        block_threshold: int = 8 * 1024 * 1024,
        block_size: int = 8 * 1024 * 1024,
        timeout: float = 60.0,
        guard: UrlGuard | None = None,
    ) -> None:
        # A user's endpoint: every connection's address judged again (DNS rebinding).
        self._guard = guard
        if not account_name or not container:
            raise ValueError("an Azure Blob storage needs an account name and a container")
        if (account_key is None) == (sas_token is None):
            raise ValueError("give exactly one of account_key and sas_token")
        if block_size < MIN_BLOCK_SIZE:
            raise ValueError(f"block_size must be at least {MIN_BLOCK_SIZE} bytes")
        if account_key is not None:
            try:
                self._key: bytes | None = base64.b64decode(account_key, validate=True)
            except ValueError:
                raise ValueError("account_key is not valid base64") from None
        else:
            self._key = None
        prefix = prefix.strip("/")
        if prefix:
            _check_key(prefix, what="prefix")
        self.account_name = account_name
        self.container = container
        self.prefix = prefix
        self.endpoint = (endpoint or f"https://{account_name}.blob.core.windows.net").rstrip("/")
        self.block_threshold = block_threshold
        self.block_size = block_size
        self._sas = dict(parse_qsl(sas_token.lstrip("?"))) if sas_token else {}
        self._secrets = [s for s in (account_key, sas_token) if s]
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self.description = f"azure://{account_name}/{container}/{prefix} at {self.endpoint}"

    def __repr__(self) -> str:
        return f"BlobStorage({self.description})"

    # -- requests ---------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, full_key: str | None = None) -> str:
        """The URL path of the container or one blob in it, percent-encoded."""
        base = urlsplit(self.endpoint).path.rstrip("/")
        path = f"{base}/{self.container}"
        return f"{path}/{quote(full_key, safe='/')}" if full_key is not None else path

    def _sign(self, method: str, path: str, params: dict[str, str], headers: dict[str, str]) -> str:
        """The SharedKey `Authorization` value for a request (Blob service, 2009-09-19+)."""
        assert self._key is not None
        lower = {k.lower(): v for k, v in headers.items()}
        length = lower.get("content-length", "")
        canonical_headers = "".join(
            f"{k}:{lower[k].strip()}\n" for k in sorted(lower) if k.startswith("x-ms-")
        )
        resource = f"/{self.account_name}{path}"
        for name in sorted(params, key=str.lower):
            resource += f"\n{name.lower()}:{params[name]}"
        string_to_sign = "\n".join(
            [
                method,
                lower.get("content-encoding", ""),
                lower.get("content-language", ""),
                "" if length == "0" else length,
                lower.get("content-md5", ""),
                lower.get("content-type", ""),
                "",  # Date: x-ms-date is sent instead
                lower.get("if-modified-since", ""),
                lower.get("if-match", ""),
                lower.get("if-none-match", ""),
                lower.get("if-unmodified-since", ""),
                lower.get("range", ""),
                canonical_headers + resource,
            ]
        )
        digest = hmac.new(self._key, string_to_sign.encode(), hashlib.sha256).digest()
        return f"SharedKey {self.account_name}:{base64.b64encode(digest).decode()}"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes = b"",
        ok: tuple[int, ...] = (200, 201, 202),
        stream: bool = False,
    ) -> httpx.Response:
        params = dict(params or {})
        headers = {
            "x-ms-date": formatdate(usegmt=True),
            "x-ms-version": API_VERSION,
            **(headers or {}),
        }
        if method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(content))
        if self._key is not None:
            headers["Authorization"] = self._sign(method, path, params, headers)
        else:
            params.update(self._sas)
        parts = urlsplit(self.endpoint)
        url = f"{parts.scheme}://{parts.netloc}{path}"
        if self._client is None:
            self._client = (
                httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
                if self._guard is None
                else guarded_client(self._guard, timeout=self._timeout)
            )
        request = self._client.build_request(
            method, url, params=params, headers=headers, content=content
        )
        try:
            answer = await self._client.send(request, stream=stream)
        except UrlRefused as exc:
            raise StorageError(str(exc), retryable=False, code="AddressRefused") from exc
        except httpx.TransportError as exc:
            raise StorageError(
                self._redact(f"ConnectionError: {exc!r}"), retryable=True, code="ConnectionError"
            ) from exc
        if answer.status_code not in ok:
            if stream:
                await answer.aread()  # the error's XML body, and the connection back to the pool
            raise self._error(answer)
        return answer

    def _error(self, answer: httpx.Response) -> StorageError:
        code = answer.headers.get("x-ms-error-code") or str(answer.status_code)
        message = answer.reason_phrase or "no message"
        try:
            root = ET.fromstring(answer.content) if answer.content else None
        except ET.ParseError:
            root = None
        if root is not None:
            code = root.findtext("Code") or code
            # Azure appends "RequestId:...\nTime:..." lines; the first line is the reason.
            message = (root.findtext("Message") or message).splitlines()[0]
        status = answer.status_code
        retryable = status >= 500 or status == 429 or code in _RETRYABLE_CODES
        return StorageError(self._redact(f"{code}: {message}"), retryable=retryable, code=code)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _url(self, full_key: str) -> str:
        return f"{self.endpoint}/{self.container}/{quote(full_key, safe='/')}"

    # -- the protocol -----------------------------------------------------------------------

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str | None = None,
        on_progress: UploadProgress | None = None,
        cancel: asyncio.Event | None = None,
        owner: str | None = None,
        if_absent: bool = False,
    ) -> StoredObject:
        """Upload `path` as `key`: one Put Blob up to `block_threshold`, blocks above.

        `owner` is kept as the blob's metadata; `if_absent` sends `If-None-Match: *` with the
        Put Blob or the Put Block List that commits, so Azure refuses to replace a blob that
        landed meanwhile (`ObjectExists`; uncommitted blocks are dropped by Azure itself).
        """
        try:
            return await self._put_file(
                key, path, content_type, on_progress, cancel, owner, if_absent
            )
        except StorageError as exc:
            if if_absent and refused_as_existing(exc):
                raise ObjectExists(key) from exc
            raise

    async def _put_file(
        self,
        key: str,
        path: Path,
        content_type: str | None,
        on_progress: UploadProgress | None,
        cancel: asyncio.Event | None,
        owner: str | None,
        if_absent: bool,
    ) -> StoredObject:
        commit: dict[str, str] = {}
        if owner is not None:
            commit[f"x-ms-meta-{_OWNER}"] = owner
        if if_absent:
            commit["If-None-Match"] = "*"
        full_key = self._full_key(key)
        blob_path = self._path(full_key)
        size = (await asyncio.to_thread(path.stat)).st_size
        ctype = content_type or _content_type(key, path)
        progress = _ProgressThrottle(size, on_progress)
        if _cancelled(cancel):
            raise StorageCancelled(f"upload of {key} cancelled")
        sha256 = Sha256()  # Azure answers no SHA-256 of its own: recorded, not checked
        if size <= self.block_threshold:
            data = await asyncio.to_thread(path.read_bytes)
            await asyncio.to_thread(sha256.add, data)
            answer = await self._request(
                "PUT",
                blob_path,
                headers={"x-ms-blob-type": "BlockBlob", "Content-Type": ctype, **commit},
                content=data,
            )
        else:
            block_size = max(self.block_size, -(-size // MAX_BLOCKS))
            ids: list[str] = []
            with path.open("rb") as src:
                sent = 0
                while True:
                    if _cancelled(cancel):
                        # Nothing was committed: the blocks are discarded by Azure itself.
                        raise StorageCancelled(f"upload of {key} cancelled")
                    chunk = await asyncio.to_thread(src.read, block_size)
                    if not chunk:
                        break
                    await asyncio.to_thread(sha256.add, chunk)
                    # Every block id of a blob must have the same length: a fixed-width number.
                    block_id = base64.b64encode(f"{len(ids):08d}".encode()).decode()
                    await self._request(
                        "PUT",
                        blob_path,
                        params={"comp": "block", "blockid": block_id},
                        content=chunk,
                    )
                    ids.append(block_id)
                    sent += len(chunk)
                    progress.advance(sent)
            if _cancelled(cancel):
                raise StorageCancelled(f"upload of {key} cancelled")
            body = (
                '<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{i}</Latest>" for i in ids)
                + "</BlockList>"
            ).encode()
            answer = await self._request(
                "PUT",
                blob_path,
                params={"comp": "blocklist"},
                headers={
                    "x-ms-blob-content-type": ctype,
                    "Content-Type": "application/xml",
                    **commit,
                },
                content=body,
            )
        etag = answer.headers.get("ETag", "").strip('"') or None
        if _cancelled(cancel):
            # The cancel came while the commit was on its way: the object must not stay (and
            # only it goes: the ETag it was given).
            await self.delete(key, if_etag=etag)
            raise StorageCancelled(f"upload of {key} cancelled")
        progress.finish()
        return StoredObject(
            key=key,
            size=size,
            etag=etag,
            url=self._url(full_key),
            version_id=answer.headers.get("x-ms-version-id"),
            sha256=sha256.hexdigest,
        )

    async def delete(self, key: str, *, if_etag: str | None = None) -> None:
        """Delete `key`; a missing blob is fine. `if_etag` sends `If-Match`: Azure refuses
        (412, `ObjectChanged`) when the blob was replaced since."""
        headers = {"If-Match": f'"{if_etag}"'} if if_etag is not None else {}
        try:
            await self._request(
                "DELETE", self._path(self._full_key(key)), headers=headers, ok=(200, 202, 404)
            )
        except StorageError as exc:
            if if_etag is not None and refused_as_existing(exc):
                raise ObjectChanged(key) from exc
            raise

    async def exists(self, key: str) -> bool:
        """Whether a blob `key` exists (Get Blob Properties)."""
        answer = await self._request("HEAD", self._path(self._full_key(key)), ok=(200, 404))
        return answer.status_code == 200

    async def presigned_url(self, key: str, expires_seconds: int = 86400) -> str:
        """A read-only URL for `key`: a service SAS when we hold the account key, else the
        user's own SAS token appended (its expiry is theirs)."""
        full_key = self._full_key(key)
        url = self._url(full_key)
        if self._key is None:
            return f"{url}?{httpx.QueryParams(self._sas)}"
        seconds = max(1, min(expires_seconds, MAX_PRESIGN_SECONDS))
        expiry = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        version = "2020-12-06"
        resource = f"/blob/{self.account_name}/{self.container}/{full_key}"
        # Service SAS string-to-sign for versions 2020-12-06 and later, fields in this order:
        # permissions, start, expiry, resource, identifier, IP, protocol, version, resource
        # type, snapshot time, encryption scope, then five response-header overrides.
        fields = ["r", "", expiry, resource, "", "", "", version, "b", "", "", "", "", "", "", ""]
        digest = hmac.new(self._key, "\n".join(fields).encode(), hashlib.sha256).digest()
        query = httpx.QueryParams(
            {
                "sv": version,
                "sr": "b",
                "sp": "r",
                "se": expiry,
                "sig": base64.b64encode(digest).decode(),
            }
        )
        return f"{url}?{query}"

    async def probe(self) -> None:
        """Write and delete a tiny blob under the prefix: proves container, credentials,
        rights."""
        full_key = self._full_key(f"{_PROBE_PREFIX}{datetime.now(UTC).strftime('%H%M%S%f')}")
        path = self._path(full_key)
        await self._request(
            "PUT",
            path,
            headers={"x-ms-blob-type": "BlockBlob", "Content-Type": "text/plain"},
            content=b"spool probe",
        )
        await self._request("DELETE", path, ok=(200, 202, 404))

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the storage's prefix that start with `prefix`, relative to the storage."""
        if "\x00" in prefix:
            raise ValueError("prefix contains a NUL character")
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        marker = ""
        while True:
            params = {"restype": "container", "comp": "list", "prefix": base + prefix}
            if marker:
                params["marker"] = marker
            answer = await self._request("GET", self._path(), params=params)
            root = ET.fromstring(answer.content)
            keys.extend(
                name[len(base) :]
                for name in (b.findtext("Name") or "" for b in root.iter("Blob"))
                if name
            )
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return sorted(keys)

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and content type of blob `key` (Get Blob Properties); None when missing."""
        answer = await self._request("HEAD", self._path(self._full_key(key)), ok=(200, 404))
        if answer.status_code == 404:
            return None
        return ObjectInfo(
            int(answer.headers.get("Content-Length", "0")),
            answer.headers.get("Content-Type"),
            etag=answer.headers.get("ETag", "").strip('"') or None,
            version_id=answer.headers.get("x-ms-version-id"),
            owner=answer.headers.get(f"x-ms-meta-{_OWNER}"),
        )

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Get Blob, with `x-ms-range` unless the whole blob is asked for, streamed."""
        headers = {} if start == 0 and end is None else {"x-ms-range": range_header(start, end)}
        answer = await self._request(
            "GET", self._path(self._full_key(key)), headers=headers, ok=(200, 206), stream=True
        )
        try:
            async for chunk in answer.aiter_bytes(READ_CHUNK):
                yield chunk
        except httpx.TransportError as exc:
            raise StorageError(
                self._redact(f"ConnectionError: {exc!r}"), retryable=True, code="ConnectionError"
            ) from exc
        finally:
            await answer.aclose()

    async def create_container(self) -> None:
        """Create the container (already there is fine): for set-up and tests, not uploads."""
        await self._request("PUT", self._path(), params={"restype": "container"}, ok=(201, 409))

    async def abort_unfinished(self, upload: str) -> None:
        """Nothing to abort: uncommitted blocks are no blob, and Azure drops them in 7 days."""

    async def close(self) -> None:
        """Close the HTTP client; a later call opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
