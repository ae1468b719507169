"""Every storage provider declared in domain/storage_providers.py is served, and nothing else.

Each one has `POST /user/<name>` (its own body in the OpenAPI document) and `DELETE
/user/<name>`; the S3-compatible ones are configured and removed for real against moto (GCS and
OSS with their endpoint pointed at it, as tests/test_user_storage.py does).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import get_args

import pytest

from spool.domain.storage_providers import PROVIDERS, Provider, named
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.s3 import S3Server


@pytest.fixture
async def lean(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A cluster without a worker node: only the API and the log are needed."""
    async with start_cluster(with_node=False) as c:
        yield c


def test_every_provider_name_has_one_declaration() -> None:
    assert tuple(PROVIDERS) == get_args(Provider)
    assert all(named(name) is PROVIDERS[name] for name in PROVIDERS)
    assert named("dropbox") is None


async def test_every_provider_has_its_routes_and_body_in_the_openapi_document(
    lean: Cluster,
) -> None:
    doc = (await lean.client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name, provider in PROVIDERS.items():
        route = doc["paths"][f"/user/{name}"]
        assert set(route) == {"post", "delete"}, name
        ref = route["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = schemas[ref.rsplit("/", 1)[-1]]
        assert set(body["properties"]) == set(provider.body.__struct_fields__), name
    provider_routes = {p for p in doc["paths"] if p.removeprefix("/user/") in PROVIDERS}
    assert provider_routes == {f"/user/{name}" for name in PROVIDERS}


async def test_every_provider_refuses_a_body_that_is_not_its_own_and_a_removal_of_nothing(
    lean: Cluster,
) -> None:
    for name, provider in PROVIDERS.items():
        empty = await lean.client.post(f"/user/{name}", json={}, headers=lean.headers())
        assert empty.status_code == 400, name
        fields, defaults = provider.body.__struct_fields__, provider.body.__struct_defaults__
        first_required = fields[0 : len(fields) - len(defaults)][0]
        assert f"`{first_required}`" in empty.json()["error"], name
        removed = await lean.client.delete(f"/user/{name}", headers=lean.headers())
        assert removed.status_code == 404, name
        assert removed.json() == {"error": f"No {provider.label} storage is configured"}


async def test_every_s3_compatible_provider_is_configured_and_removed_through_its_routes(
    lean: Cluster, s3_server: S3Server
) -> None:
    bucket = f"user-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=bucket)
    body = {
        "endpoint": s3_server.endpoint_url,
        "bucket": bucket,
        "region": "us-east-1",
        "access_key": "AKIAUSERSTORAGE0WXYZ",
        "secret_key": "Sup3r/Secret+Key-that-must-never-leak",
    }
    for name, provider in PROVIDERS.items():
        if provider.protocol != "s3":
            continue  # Azure Blob: tests/test_user_storage.py, against Azurite
        configured = await lean.client.post(f"/user/{name}", json=body, headers=lean.headers())
        assert configured.status_code == 201, (name, configured.text)
        assert configured.json()["provider"] == name
        assert configured.json()["message"] == f"{provider.label} storage configured successfully"
        shown = await lean.client.get("/user/storage", headers=lean.headers())
        assert shown.json()["provider"] == name
        removed = await lean.client.delete(f"/user/{name}", headers=lean.headers())
        assert removed.status_code == 200, (name, removed.text)
        assert removed.json()["provider"] == "default"
        shown = await lean.client.get("/user/storage", headers=lean.headers())
        assert shown.json()["default"] is True
