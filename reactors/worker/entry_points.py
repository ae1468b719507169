"""The arq functions a node's workers run: the function names are what the dispatcher enqueues."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from arq.typing import WorkerCoroutine

from spool.adapters import log_context
from spool.domain import job
from spool.domain.events import Metadata

if TYPE_CHECKING:
    from spool.reactors.worker.node import Node

log = logging.getLogger("spool.node")


def _stage_function(stage: job.Stage) -> WorkerCoroutine:
    async def run_unit(
        ctx: dict[str, Any],
        job_id: str,
        run: int,
        attempt: int,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> str:
        node_: Node = ctx["node"]
        cause = Metadata(correlation_id=correlation_id, causation_id=causation_id)
        with log_context.bound(job_id=job_id):
            outcome = await node_.run_stage(stage, job_id, run, attempt, cause)
            log.info("%s of job %s (run %d, attempt %d): %s", stage, job_id, run, attempt, outcome)
        return outcome

    run_unit.__name__ = run_unit.__qualname__ = stage
    return run_unit


download = _stage_function("download")
mux = _stage_function("mux")
upload = _stage_function("upload")


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """A round trip through this node's own queue: `POST /api/v1/devices/{id}/ping`."""
    node_: Node = ctx["node"]
    return {"node_id": node_.node_id, "hostname": node_.hostname, "answered_at": time.time()}
