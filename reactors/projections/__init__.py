"""The projections Spool maintains; `all_projections()` is what the runner follows."""

from __future__ import annotations

from reactors.projection import Projection
from reactors.projections.api_keys import ApiKeysProjection
from reactors.projections.cluster_config import ClusterConfigProjection
from reactors.projections.job_minutes import JobMinutesProjection
from reactors.projections.job_stages import JobStagesProjection
from reactors.projections.jobs import JobsProjection
from reactors.projections.node_minutes import NodeMinutesProjection
from reactors.projections.nodes import NodesProjection
from reactors.projections.storage_configs import StorageConfigsProjection
from reactors.projections.tasks import TasksProjection
from reactors.projections.usage import UsageProjection
from reactors.projections.usage_minutes import UsageMinutesProjection
from reactors.projections.viewers import ViewersProjection


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
