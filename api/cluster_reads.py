"""Cluster-wide reads: the one rule for everything that shows the cluster, not one account.

The rule: **admin keys only**. What the cluster is made of and how busy it is (nodes, their
host names and addresses, their load and network, every account's job and task counts, the
API's request counts and logs) is the operator's, not a tenant's. `/metrics` also answers the
scrape token (`SPOOL_METRICS_TOKEN`, sent as `Authorization: Bearer`), since a Prometheus
scraper carries no API key.

The surfaces, each refusing in its own shape (401 without a key, 403 with a user key):
`/api/v1/devices` and `/api/v1/cluster/*` (the envelope), `/dashboard/cluster`, `/nodes` and
`/throughput` and `/metrics` (`{"error"}`), `/api/cluster/viewers` (`{"message"}`), the health
socket's `sysinfo <node>`, `network`, `requests` and `logs` (`error: ...`), the device updates
of `/ws` (not sent to users), and the node ids of `/api/v1/tasks/types` and of a waiting task's
reason (left out for users).
A user's key still reads its own account everywhere, and on the health socket the load of the
API's own host (`sysinfo` with no node: CPU, memory, disk; no names or addresses).
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from spool.api.auth import Principal, job_api_principal, key_in, lookup
from spool.api.envelope import ClusterApiError, cluster_principal
from spool.api.errors import JobApiError
from spool.api.services import Services, services_of

REFUSED = "This is a cluster-wide read: it needs an admin API key"
"""What every surface says to a user key, in its own shape."""


def may_read_cluster(admin: bool) -> bool:
    """Whether a caller may read the cluster as a whole: the rule, in one place."""
    return admin


async def cluster_reader(request: Request[Any, Any, Any], services: Services) -> Principal:
    """The caller of a cluster-wide read under `/api/v1`, refused in the envelope otherwise."""
    principal = await cluster_principal(request, services)
    if not may_read_cluster(principal.admin):
        raise ClusterApiError(403, "UNAUTHORIZED", REFUSED)
    return principal


async def job_api_cluster_reader(request: Request[Any, Any, Any], services: Services) -> Principal:
    """The caller of a cluster-wide read answered as `{"error"}` (the dashboard's panels)."""
    principal = await job_api_principal(request, services)
    if not may_read_cluster(principal.admin):
        raise JobApiError(status_code=403, detail=REFUSED)
    return principal


async def metrics_reader(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """The guard of `/metrics`: an admin key, or the scrape token as `Authorization: Bearer`;
    `{"error"}` otherwise."""
    services = services_of(connection.app)
    key = key_in(connection.scope)
    if key is None:
        raise JobApiError(
            status_code=401,
            detail="Send an admin API key (x-api-key) or the scrape token (Authorization: Bearer)",
        )
    token = services.settings.metrics_token
    if token and hmac.compare_digest(key.encode(), token.encode()):
        return
    principal = await lookup(services.keys, key)
    if principal is None:
        raise JobApiError(status_code=401, detail="Invalid API key or scrape token")
    if not may_read_cluster(principal.admin):
        raise JobApiError(status_code=403, detail=REFUSED)
