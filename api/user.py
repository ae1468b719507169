"""The caller's own settings: the webhook signing secret, and where their uploads go.

Storage endpoints (`/user/<provider>` for each provider of `domain.storage_providers`, and
`/user/bucket`, the legacy name of s3; `storage_router`): POST checks the credentials by
writing and deleting a small probe object, then records a `StorageConfigured` event on the
account stream with the credentials sealed under the account's destroyable data key; DELETE
records `StorageRemoved`. Answers never carry a secret: they show the provider, bucket,
region, endpoint, prefix and a masked key id.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Router, delete, get, post
from litestar.handlers import HTTPRouteHandler

# Importing the account storage (and through it domain.storage_config) registers the storage
# events with the registry the event store decodes with.
from spool.adapters import secret_box
from spool.adapters.account_storage import Credentials, StorageSpec, build_storage
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import StorageError
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.api.targets import refuse_forbidden_target
from spool.application.storage import configure_storage, remove_storage, storage_of
from spool.domain import file_names, storage_config, storage_providers, webhook
from spool.domain.storage_config import StorageConfigured
from spool.domain.storage_providers import (
    PROVIDER_NAMES,
    PROVIDERS,
    BlobBody,
    Provider,
    S3CompatibleBody,
    StorageProvider,
)

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
    provider: StorageProvider, body: S3CompatibleBody
) -> tuple[StorageSpec, Credentials, str]:
    """Spec, credentials and masked key id of an S3-compatible provider, by its declaration."""
    access_key = _secret(body.access_key, "access_key")
    secret_key = _secret(body.secret_key, "secret_key")
    region = _region(body.region)
    endpoint = _endpoint(body.endpoint) or provider.endpoint
    if endpoint is None and provider.endpoint_for_region is not None:
        if region is None:
            raise _bad(f"region (e.g. {provider.region_example}) or endpoint is required")
        endpoint = provider.endpoint_for_region(region)
    path_style = provider.path_style
    if path_style is None:
        # A provider whose addressing is the user's choice has `path_style` in its body.
        path_style = bool(getattr(body, "path_style", True))
    spec = StorageSpec(
        provider=provider.name,
        bucket=_bucket(body.bucket),
        region=region,
        endpoint=endpoint,
        prefix=_prefix(body.folder_prefix, body.base_folder),
        path_style=path_style,
    )
    credentials = Credentials(access_key=access_key, secret_key=secret_key)
    return spec, credentials, storage_config.mask_key_id(access_key)


def _config(
    provider: StorageProvider, body: msgspec.Struct
) -> tuple[StorageSpec, Credentials, str]:
    """Spec, credentials and hint of a provider's body."""
    if isinstance(body, BlobBody):
        return _blob_config(body)
    if not isinstance(body, S3CompatibleBody):
        raise TypeError(f"{type(body).__name__} is not a storage body")
    return _s3_like_config(provider, body)


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
    name = fields.pop("provider", "s3")
    provider = storage_providers.named(name)
    if provider is None:
        *others, last = PROVIDERS
        raise _bad(f"storage.provider must be {', '.join(others)} or {last}")
    try:
        body = msgspec.convert(fields, provider.body, strict=True)
    except msgspec.ValidationError as exc:
        raise _bad(f"storage: {exc}") from None
    return _config(provider, body)


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


_LEGACY_NAMES: dict[str, Provider] = {"bucket": "s3"}
"""Route names kept for old clients: `/user/bucket` is `/user/s3`."""


def _storage_routes(route: str, provider: StorageProvider) -> list[HTTPRouteHandler]:
    """`POST /user/<route>` (configure, checked first) and `DELETE /user/<route>` (remove)."""
    legacy = "" if route == provider.name else f" (legacy; the same as /user/{provider.name})"

    async def configure(
        request: Request[Any, Any, Any], services: Services, data: Any, principal: Principal
    ) -> StorageAnswer:
        return await _configure(request, services, principal, *_config(provider, data))

    async def remove(
        request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> StorageAnswer:
        return await _remove(request, services, principal, provider.name)

    # The body type is the provider's: it is what the route decodes and what OpenAPI shows.
    configure.__annotations__ = {**configure.__annotations__, "data": provider.body}
    configure.__name__ = configure.__qualname__ = f"configure_{route}"
    configure.__doc__ = f"Configure {provider.about}{legacy}; checked first."
    remove.__name__ = remove.__qualname__ = f"remove_{route}"
    remove.__doc__ = (
        f"Remove the {provider.label} storage configuration{legacy}: uploads go to the default "
        "storage again."
    )
    return [
        post(f"/{route}", status_code=201)(configure),
        delete(f"/{route}", status_code=200)(remove),
    ]


def storage_router() -> Router:
    """Every provider's configure and remove routes, made from `domain.storage_providers`.

    Registered in the job API's Router (api/surfaces.py), which gives them the caller and the
    error shape.
    """
    return Router(
        path="/user",
        route_handlers=[
            handler
            for route, name in [*((p, p) for p in PROVIDERS), *_LEGACY_NAMES.items()]
            for handler in _storage_routes(route, PROVIDERS[name])
        ],
        tags=["user"],
    )
