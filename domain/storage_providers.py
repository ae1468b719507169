"""Every storage provider a user can send their uploads to: one declaration each.

A declaration names the provider (`/user/<name>`, `StorageConfigured.provider`), how messages
call it, its request body, and how a client reaches it: the protocol, the endpoint when none is
given (fixed, or made from the region), the bucket addressing and the region a client signs
with. `api/user.py` makes the `POST` / `DELETE /user/<name>` routes and the checks of a job's
own `storage` from `PROVIDERS`; `adapters/account_storage.py` builds the client from it.

A new S3-compatible provider is its name in `Provider` and its entry in `PROVIDERS` (with a body
of its own only if the existing ones do not fit); docs/architecture.md, "Where to add things".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args

import msgspec

Provider = Literal["s3", "gcs", "oss", "blob"]
Protocol = Literal["s3", "azure-blob"]


class S3CompatibleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What every S3-compatible provider's body holds: a bucket, a key pair, where, a prefix."""

    bucket: str
    access_key: str
    secret_key: str
    endpoint: str | None = None
    region: str | None = None
    folder_prefix: str | None = None
    base_folder: str | None = None


class S3Body(S3CompatibleBody, kw_only=True, forbid_unknown_fields=True):
    """Any S3-compatible storage: AWS S3, Cloudflare R2, MinIO, Wasabi, Backblaze B2...

    `endpoint` e.g. `https://s3.us-east-1.amazonaws.com` or
    `https://<account>.r2.cloudflarestorage.com` (omitted: AWS S3 itself); `region` e.g.
    `us-east-1`, `auto` for R2.
    """

    path_style: bool = True
    """Address buckets as `endpoint/bucket` (MinIO needs it) rather than `bucket.endpoint`."""


class GcsBody(S3CompatibleBody, kw_only=True, forbid_unknown_fields=True):
    """Google Cloud Storage through its S3-interoperable XML API, with an HMAC key.

    `access_key` is the HMAC key's access id (`GOOG1...`), `secret_key` its secret; `endpoint`
    defaults to `https://storage.googleapis.com`.
    """


class OssBody(S3CompatibleBody, kw_only=True, forbid_unknown_fields=True):
    """Alibaba Cloud OSS through its S3-compatible API (virtual-hosted style).

    `region` e.g. `cn-hangzhou` gives the endpoint `https://oss-cn-hangzhou.aliyuncs.com`.
    """

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


def oss_endpoint(region: str) -> str:
    """Alibaba OSS's public endpoint for a region such as `cn-hangzhou` (or `oss-cn-hangzhou`)."""
    region = region.strip()
    if not region.startswith("oss-"):
        region = f"oss-{region}"
    return f"https://{region}.aliyuncs.com"


@dataclass(frozen=True, kw_only=True)
class StorageProvider:
    """One provider: its name, label, body and the rules that reach it."""

    name: Provider
    label: str
    """How messages to users name it ("Google Cloud Storage")."""
    about: str
    """What the configure route's documentation says it is."""
    body: type[msgspec.Struct]
    protocol: Protocol = "s3"
    endpoint: str | None = None
    """The endpoint when the body gives none; None: the client's own (AWS for S3)."""
    endpoint_for_region: Callable[[str], str] | None = None
    """Makes the endpoint from the region when the body gives none (then one of them is needed)."""
    region_example: str = "us-east-1"
    path_style: bool | None = None
    """Buckets always (True) or never (False) addressed as `endpoint/bucket`; None: the body's
    `path_style` decides."""
    virtual_hosted: bool = False
    """Without path style, always name the bucket in the host (rather than the client's choice,
    which is path style for a custom endpoint)."""
    signing_region: str | None = None
    """The region a client signs with when the body gives none."""


_DECLARED: Final = (
    StorageProvider(
        name="s3",
        label="S3",
        about="S3-compatible storage (AWS S3, R2, MinIO, Wasabi...)",
        body=S3Body,
    ),
    StorageProvider(
        name="gcs",
        label="Google Cloud Storage",
        about="Google Cloud Storage (XML API, HMAC key)",
        body=GcsBody,
        endpoint="https://storage.googleapis.com",
        path_style=True,
        # GCS ignores the region in SigV4 but needs one to sign with; "auto" is what it expects.
        signing_region="auto",
    ),
    StorageProvider(
        name="oss",
        label="Alibaba OSS",
        about="Alibaba Cloud OSS (virtual-hosted style)",
        body=OssBody,
        endpoint_for_region=oss_endpoint,
        region_example="cn-hangzhou",
        # With a custom endpoint botocore's "auto" means path style, which OSS refuses
        # (SecondLevelDomainForbidden): its clients name the bucket in the host.
        virtual_hosted=True,
    ),
    StorageProvider(
        name="blob",
        label="Azure Blob",
        about="Azure Blob Storage (account key, SAS token or connection string)",
        body=BlobBody,
        protocol="azure-blob",
    ),
)

PROVIDERS: Final[dict[Provider, StorageProvider]] = {p.name: p for p in _DECLARED}
"""Every provider by name, in the order the documentation lists them."""

if tuple(PROVIDERS) != get_args(Provider):
    raise RuntimeError("every name in Provider needs exactly one StorageProvider, in order")

PROVIDER_NAMES: Final[dict[str, str]] = {p.name: p.label for p in _DECLARED}
"""How each provider is named in messages to users."""


def named(name: object) -> StorageProvider | None:
    """The provider called `name` (as a request spells it), or None."""
    return next((p for p in _DECLARED if p.name == name), None)
