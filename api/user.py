"""The caller's own settings: the webhook signing secret, and where their uploads go.

Storage endpoints (`/user/s3`, `/user/bucket` (legacy alias of s3), `/user/gcs`, `/user/oss`,
`/user/blob`): POST checks the credentials by writing and deleting a small probe object, then
records a `StorageConfigured` event on the account stream with the credentials sealed under
the account's destroyable data key; DELETE records `StorageRemoved`. Answers never carry a
secret: they show the provider, bucket, region, endpoint, prefix and a masked key id.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, delete, get, post

# Importing the account storage (and through it domain.storage_config) registers the storage
# events with the registry the event store decodes with.
from spool.adapters import secret_box
from spool.adapters.account_storage import (
    GCS_ENDPOINT,
    Credentials,
    StorageSpec,
    build_storage,
    oss_endpoint,
)
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import StorageError
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.api.targets import refuse_forbidden_target
from spool.application.storage import configure_storage, remove_storage, storage_of
from spool.domain import file_names, storage_config, webhook
from spool.domain.storage_config import PROVIDER_NAMES, Provider, StorageConfigured

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_MAX_PREFIX = 512  # characters of folder_prefix, and of base_folder


class WebhookSecret(msgspec.Struct):
    """How to check that a webhook came from this Spool."""

    secret: str
    signature_header: str
    timestamp_header: str
    algorithm: str
    signed_content: str


class S3Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Any S3-compatible storage: AWS S3, Cloudflare R2, MinIO, Wasabi, Backblaze B2..."""

    bucket: str
    access_key: str
    secret_key: str
    endpoint: str | None = None
    """e.g. `https://s3.us-east-1.amazonaws.com`, `https://<account>.r2.cloudflarestorage.com`;
    omitted: AWS S3 itself."""
    region: str | None = None
    """e.g. `us-east-1`; `auto` for R2."""
    folder_prefix: str | None = None
    base_folder: str | None = None
    path_style: bool = True
    """Address buckets as `endpoint/bucket` (MinIO needs it) rather than `bucket.endpoint`."""


class GcsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Google Cloud Storage through its S3-interoperable XML API, with an HMAC key."""

    bucket: str
    access_key: str
    """The HMAC key's access id (`GOOG1...`)."""
    secret_key: str
    """The HMAC key's secret."""
    folder_prefix: str | None = None
    base_folder: str | None = None
    endpoint: str | None = None
    """Defaults to `https://storage.googleapis.com`."""
    region: str | None = None


class OssBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Alibaba Cloud OSS through its S3-compatible API (virtual-hosted style)."""

    bucket: str
    access_key: str
    secret_key: str
    region: str | None = None
    """e.g. `cn-hangzhou`; gives the endpoint `https://oss-cn-hangzhou.aliyuncs.com`."""
    endpoint: str | None = None
    folder_prefix: str | None = None
    base_folder: str | None = None
    path_style: bool = False
    """OSS itself refuses path style; only for OSS-compatible servers that need it."""


class BlobBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Azure Blob Storage: an account key or a SAS token (or a connection string)."""

    container: str
    account_name: str | None = None
    account_key: str | None = None
    sas_token: str | None = None
    connection_string: str | None = None
    endpoint: str | None = None
    """The blob service URL; defaults to `https://<account_name>.blob.core.windows.net`."""
    folder_prefix: str | None = None
    base_folder: str | None = None


class StorageAnswer(msgspec.Struct, kw_only=True):
    """A storage configuration as the API shows it: never a secret."""

    message: str
    provider: str
    container_or_bucket: str | None = None
    folder_prefix: str | None = None
    region: str | None = None
    endpoint: str | None = None
    path_style: bool | None = None
    access_key: str | None = None
    """The access key id, masked (`AKIA…WXYZ`)."""
    account_name: str | None = None
    default: bool = False
    """True when no storage of the user's own is configured: uploads go to the cluster's."""


def _bad(message: str) -> JobApiError:
    return JobApiError(status_code=400, detail=message)


def _text(value: str | None, field: str, *, required: bool = False) -> str | None:
    """`value` trimmed; None when empty (400 if `required`)."""
    value = value.strip() if value is not None else None
    if not value:
        if required:
            raise _bad(f"{field} is required")
        return None
    return value


def _secret(value: str | None, field: str) -> str:
    """A key or secret: required, printable ASCII without spaces, of sane length."""
    value = _text(value, field, required=True)
    assert value is not None
    if len(value) > 1024 or not _PRINTABLE.match(value):
        raise _bad(f"{field} must be printable characters without spaces")
    return value


def _prefix(folder_prefix: str | None, base_folder: str | None) -> str:
    """The object key prefix: `folder_prefix/base_folder`, each a folder path held to the rules
    of a job's `folder` (domain/file_names.py); a `/` around either is dropped."""
    parts = []
    for field, value in (("folder_prefix", folder_prefix), ("base_folder", base_folder)):
        if value is None or not value.strip("/ "):
            continue
        try:
            parts.append(
                file_names.check_folder(
                    value.strip().strip("/"), field=field, max_length=_MAX_PREFIX
                )
            )
        except file_names.UnsafeName as exc:
            raise _bad(str(exc)) from None
    return "/".join(parts)


def _region(value: str | None) -> str | None:
    region = _text(value, "region")
    if region is not None and not _REGION.match(region):
        raise _bad("region must look like us-east-1 (letters, digits and '-')")
    return region


def _bucket(value: str, field: str = "bucket") -> str:
    bucket = _text(value, field, required=True)
    assert bucket is not None
    if not _BUCKET.match(bucket):
        raise _bad(f"{field} is not a valid bucket name: 3 to 63 letters, digits, '.', '-'")
    return bucket


def _endpoint(value: str | None) -> str | None:
    """An http(s) endpoint without credentials, query or fragment; trailing '/' dropped."""
    endpoint = _text(value, "endpoint")
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if "@" in parts.netloc:
        raise _bad("endpoint must not carry credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("endpoint must be an http(s)://host[:port] URL")
    try:
        parts.port  # noqa: B018 - only to validate it
    except ValueError:
        raise _bad("endpoint has an invalid port") from None
    if parts.query or parts.fragment:
        raise _bad("endpoint must not have a query or fragment")
    return endpoint.rstrip("/")


def _parse_connection_string(text: str) -> dict[str, str]:
    """`Key=Value;...` pairs of an Azure connection string (values may contain '=')."""
    fields: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise _bad("connection_string must be Key=Value pairs separated by ';'")
        fields[name.strip()] = value.strip()
    return fields


def _blob_config(body: BlobBody) -> tuple[StorageSpec, Credentials, str]:
    account_name = _text(body.account_name, "account_name")
    account_key = _text(body.account_key, "account_key")
    sas_token = _text(body.sas_token, "sas_token")
    endpoint = _endpoint(body.endpoint)
    if body.connection_string is not None and body.connection_string.strip():
        fields = _parse_connection_string(body.connection_string)
        account_name = account_name or fields.get("AccountName")
        account_key = account_key or fields.get("AccountKey")
        sas_token = sas_token or fields.get("SharedAccessSignature")
        endpoint = endpoint or _endpoint(fields.get("BlobEndpoint"))
        if endpoint is None and account_name and fields.get("EndpointSuffix"):
            protocol = fields.get("DefaultEndpointsProtocol", "https")
            endpoint = _endpoint(
                f"{protocol}://{account_name}.blob.{fields['EndpointSuffix'].strip('.')}"
            )
    if account_name is None:
        raise _bad("account_name is required (or a connection_string that has AccountName)")
    if not _ACCOUNT.match(account_name):
        raise _bad("account_name must be 3 to 24 lowercase letters and digits")
    if account_key is None and sas_token is None:
        raise _bad("Either account_key or sas_token must be provided")
    if account_key is not None and sas_token is not None:
        raise _bad("Provide either account_key or sas_token, not both")
    if account_key is not None:
        account_key = _secret(account_key, "account_key")
    if sas_token is not None:
        sas_token = _secret(sas_token.lstrip("?"), "sas_token")
    container = _text(body.container, "container", required=True)
    assert container is not None
    if not _CONTAINER.match(container):
        raise _bad("container must be 3 to 63 lowercase letters, digits and single '-'")
    spec = StorageSpec(
        provider="blob",
        bucket=container,
        endpoint=endpoint or f"https://{account_name}.blob.core.windows.net",
        prefix=_prefix(body.folder_prefix, body.base_folder),
        path_style=True,
        account_name=account_name,
    )
    hint = f"{account_name} ({'account key' if account_key else 'SAS token'})"
    return spec, Credentials(account_key=account_key, sas_token=sas_token), hint


def _s3_like_config(
    provider: Provider, body: S3Body | GcsBody | OssBody
) -> tuple[StorageSpec, Credentials, str]:
    """Spec, credentials and masked key id of the S3-compatible providers."""
    access_key = _secret(body.access_key, "access_key")
    secret_key = _secret(body.secret_key, "secret_key")
    region = _region(body.region)
    endpoint = _endpoint(body.endpoint)
    if isinstance(body, GcsBody):
        endpoint, path_style = endpoint or GCS_ENDPOINT, True
    elif isinstance(body, OssBody):
        if endpoint is None:
            if region is None:
                raise _bad("region (e.g. cn-hangzhou) or endpoint is required")
            endpoint = oss_endpoint(region)
        path_style = body.path_style
    else:
        path_style = body.path_style
    spec = StorageSpec(
        provider=provider,
        bucket=_bucket(body.bucket),
        region=region,
        endpoint=endpoint,
        prefix=_prefix(body.folder_prefix, body.base_folder),
        path_style=path_style,
    )
    credentials = Credentials(access_key=access_key, secret_key=secret_key)
    return spec, credentials, storage_config.mask_key_id(access_key)


async def _check(
    spec: StorageSpec, credentials: Credentials, guard: UrlGuard, *, timeout: float
) -> None:
    """Write and delete a probe object; 400 with the storage's own reason if that fails, or
    when the storage has not answered within `timeout` seconds (the probe deadline)."""
    try:
        storage = build_storage(spec, credentials, guard=guard)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    try:
        # Async I/O on the loop: at the deadline the task is cancelled and its sockets closed.
        async with asyncio.timeout(timeout):
            await storage.probe()
    except StorageError as exc:
        message = exc.message
        for secret in (credentials.secret_key, credentials.account_key, credentials.sas_token):
            if secret:
                message = message.replace(secret, "***")
        raise _bad(f"Storage check failed: {message}") from None
    except TimeoutError:
        raise _bad(
            f"Storage check failed: no answer from the storage within {timeout:g} s"
        ) from None
    finally:
        await storage.close()


def _answer(configured: StorageConfigured | None, message: str) -> StorageAnswer:
    if configured is None:
        return StorageAnswer(message=message, provider="default", default=True)
    blob = configured.provider == "blob"
    return StorageAnswer(
        message=message,
        provider=configured.provider,
        container_or_bucket=configured.bucket,
        folder_prefix=configured.prefix or None,
        region=configured.region,
        endpoint=configured.endpoint,
        path_style=None if blob else configured.path_style,
        access_key=None if blob else configured.access_key_hint,
        account_name=configured.account_name,
    )


async def sealed_storage(
    services: Services,
    principal: Principal,
    spec: StorageSpec,
    credentials: Credentials,
    hint: str,
) -> StorageConfigured:
    """Check a storage (SSRF rules, then a probe object) and seal its credentials."""
    if spec.endpoint is not None:
        # The probe is a request the API itself makes to a user-chosen host: download rules apply.
        await refuse_forbidden_target(services, spec.endpoint, what="endpoint")
    settings: Settings = services.settings
    await _check(spec, credentials, services.guard, timeout=settings.probe_timeout)
    sealed = await secret_box.seal(
        services.pool,
        settings.resolved_secret_key(),
        principal.account_id,
        msgspec.json.encode(credentials),
    )
    return StorageConfigured(
        account_id=principal.account_id,
        provider=spec.provider,
        bucket=spec.bucket,
        region=spec.region,
        endpoint=spec.endpoint,
        prefix=spec.prefix,
        path_style=spec.path_style,
        access_key_hint=hint,
        account_name=spec.account_name,
        sealed_credentials=sealed,
    )


def storage_spec(raw: dict[str, Any]) -> tuple[StorageSpec, Credentials, str]:
    """Spec, credentials and hint of a storage object `{"provider": ..., <its fields>}`."""
    fields = dict(raw)
    provider = fields.pop("provider", "s3")
    bodies: dict[str, Any] = {"s3": S3Body, "gcs": GcsBody, "oss": OssBody, "blob": BlobBody}
    if provider not in bodies:
        raise _bad("storage.provider must be s3, gcs, oss or blob")
    try:
        body = msgspec.convert(fields, bodies[provider], strict=True)
    except msgspec.ValidationError as exc:
        raise _bad(f"storage: {exc}") from None
    if isinstance(body, BlobBody):
        return _blob_config(body)
    return _s3_like_config(provider, body)


async def _configure(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    spec: StorageSpec,
    credentials: Credentials,
    hint: str,
) -> StorageAnswer:
    configured = await sealed_storage(services, principal, spec, credentials, hint)
    meta = command_metadata(request, principal.key_id)
    await configure_storage(services.store, configured, meta)
    name = PROVIDER_NAMES[spec.provider]
    return _answer(configured, f"{name} storage configured successfully")


async def _remove(
    request: Request[Any, Any, Any], services: Services, principal: Principal, provider: Provider
) -> StorageAnswer:
    meta = command_metadata(request, principal.key_id)
    await remove_storage(services.store, principal.account_id, provider, meta)
    name = PROVIDER_NAMES[provider]
    return _answer(None, f"{name} storage removed; uploads go to the default storage")


class UserController(Controller):
    path = "/user"
    tags = ["user"]

    @get("/webhook")
    async def webhook_secret(self, services: Services, principal: Principal) -> WebhookSecret:
        """The secret your webhooks are signed with, and how the signature is made."""
        settings: Settings = services.settings
        return WebhookSecret(
            secret=webhook.account_secret(settings.resolved_secret_key(), principal.account_id),
            signature_header=webhook.SIGNATURE_HEADER,
            timestamp_header=webhook.TIMESTAMP_HEADER,
            algorithm="HMAC-SHA256, hex, prefixed sha256=",
            signed_content="<timestamp header value>.<raw request body>",
        )

    @get("/storage")
    async def get_storage(self, services: Services, principal: Principal) -> StorageAnswer:
        """Where your uploads go: your own storage (secrets masked), or the cluster default."""
        state = await storage_of(services.store, principal.account_id)
        if state.current is None:
            return _answer(None, "No storage of your own: uploads go to the default storage")
        return _answer(state.current, f"{PROVIDER_NAMES[state.current.provider]} storage")

    @post("/s3", status_code=201)
    async def configure_s3(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: S3Body,
        principal: Principal,
    ) -> StorageAnswer:
        """Configure S3-compatible storage (AWS S3, R2, MinIO, Wasabi...); checked first."""
        return await _configure(request, services, principal, *_s3_like_config("s3", data))

    @delete("/s3", status_code=200)
    async def remove_s3(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        """Remove the S3 storage configuration: uploads go to the default storage again."""
        return await _remove(request, services, principal, "s3")

    @post("/bucket", status_code=201)
    async def configure_bucket(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: S3Body,
        principal: Principal,
    ) -> StorageAnswer:
        """Configure S3 storage (legacy; the same as POST /user/s3)."""
        return await _configure(request, services, principal, *_s3_like_config("s3", data))

    @delete("/bucket", status_code=200)
    async def remove_bucket(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        """Remove S3 storage (legacy; the same as DELETE /user/s3)."""
        return await _remove(request, services, principal, "s3")

    @post("/gcs", status_code=201)
    async def configure_gcs(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: GcsBody,
        principal: Principal,
    ) -> StorageAnswer:
        """Configure Google Cloud Storage (XML API, HMAC key); checked first."""
        return await _configure(request, services, principal, *_s3_like_config("gcs", data))

    @delete("/gcs", status_code=200)
    async def remove_gcs(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        """Remove the Google Cloud Storage configuration."""
        return await _remove(request, services, principal, "gcs")

    @post("/oss", status_code=201)
    async def configure_oss(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: OssBody,
        principal: Principal,
    ) -> StorageAnswer:
        """Configure Alibaba Cloud OSS (virtual-hosted style); checked first."""
        return await _configure(request, services, principal, *_s3_like_config("oss", data))

    @delete("/oss", status_code=200)
    async def remove_oss(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        """Remove the Alibaba OSS configuration."""
        return await _remove(request, services, principal, "oss")

    @post("/blob", status_code=201)
    async def configure_blob(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: BlobBody,
        principal: Principal,
    ) -> StorageAnswer:
        """Configure Azure Blob Storage (account key, SAS token or connection string)."""
        return await _configure(request, services, principal, *_blob_config(data))

    @delete("/blob", status_code=200)
    async def remove_blob(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        """Remove the Azure Blob Storage configuration."""
        return await _remove(request, services, principal, "blob")
