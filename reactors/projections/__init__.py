"""The projections Spool maintains; `all_projections()` is what the runner follows."""

from __future__ import annotations

from spool.reactors.projection import Projection
from spool.reactors.projections.api_keys import ApiKeysProjection
from spool.reactors.projections.cluster_config import ClusterConfigProjection
from spool.reactors.projections.job_minutes import JobMinutesProjection
from spool.reactors.projections.job_stages import JobStagesProjection
from spool.reactors.projections.jobs import JobsProjection
from spool.reactors.projections.node_minutes import NodeMinutesProjection
from spool.reactors.projections.nodes import NodesProjection
from spool.reactors.projections.storage_configs import StorageConfigsProjection
from spool.reactors.projections.tasks import TasksProjection
from spool.reactors.projections.usage import UsageProjection
from spool.reactors.projections.usage_minutes import UsageMinutesProjection
from spool.reactors.projections.viewers import ViewersProjection


def all_projections() -> list[Projection]:
    """Every projection, in the order the runner applies them."""
    return [
        ApiKeysProjection(),
        JobsProjection(),
        NodesProjection(),
        UsageProjection(),
        StorageConfigsProjection(),
        TasksProjection(),
        ClusterConfigProjection(),
        UsageMinutesProjection(),
        ViewersProjection(),
        # Reporting (docs/reporting.md): read by the `reporting` views, not by the API.
        JobStagesProjection(),
        JobMinutesProjection(),
        NodeMinutesProjection(),
    ]
