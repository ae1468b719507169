"""Spool's read models: each module owns its tables, its projection (`apply`), the row a folded
state gives and the queries the API, the reactors and `verify` run on it.

`all_projections()` is the registry the runner follows (reactors/projection.py), in apply order.
Importing this package puts every read model's tables on `spool.adapters.tables.metadata`.
"""

from __future__ import annotations

from spool.adapters.read_models.api_keys import ApiKeysProjection
from spool.adapters.read_models.archive import ArchiveProjection
from spool.adapters.read_models.cluster_config import ClusterConfigProjection
from spool.adapters.read_models.job_minutes import JobMinutesProjection
from spool.adapters.read_models.job_stages import JobStagesProjection
from spool.adapters.read_models.jobs import JobsProjection
from spool.adapters.read_models.node_minutes import NodeMinutesProjection
from spool.adapters.read_models.nodes import NodesProjection
from spool.adapters.read_models.operations import OPERATIONS
from spool.adapters.read_models.pauses import PausesProjection
from spool.adapters.read_models.projection import Projection
from spool.adapters.read_models.storage_configs import StorageConfigsProjection
from spool.adapters.read_models.subscriptions import SubscriptionsProjection
from spool.adapters.read_models.tasks import TASKS
from spool.adapters.read_models.usage import UsageProjection
from spool.adapters.read_models.usage_minutes import UsageMinutesProjection
from spool.adapters.read_models.viewers import ViewersProjection
from spool.adapters.tables import metadata

__all__ = ["Projection", "all_projections", "metadata"]


def all_projections() -> list[Projection]:
    """Every projection, in the order the runner applies them."""
    return [
        ApiKeysProjection(),
        JobsProjection(),
        NodesProjection(),
        UsageProjection(),
        StorageConfigsProjection(),
        TASKS,
        ClusterConfigProjection(),
        UsageMinutesProjection(),
        ViewersProjection(),
        OPERATIONS,
        PausesProjection(),
        SubscriptionsProjection(),
        ArchiveProjection(),
        # Reporting (docs/reporting.md): read by the `reporting` views, not by the API.
        JobStagesProjection(),
        JobMinutesProjection(),
        NodeMinutesProjection(),
    ]
