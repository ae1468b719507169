"""Which of a node's local work files a job still needs: one run's folder on one node.

A run's files are downloaded on one node, and its mux and upload go to that node's own queue
(reactors/pipeline.py), so nothing else reads them. They are needed while the job goes on in
that run, at mux or upload, on that node. A download starts from an empty folder
(reactors/worker/stages_runner.py), so a download, whichever node it is given to, needs none of
an earlier attempt's files.
"""

from __future__ import annotations

from spool.domain.job import JobState


def still_needed(state: JobState | None, node_id: str, run: int) -> bool:
    """Whether node `node_id`'s files of `run` of the job in `state` (None: no such job) are
    still needed by the job's current unit of work."""
    return (
        state is not None
        and not state.terminal
        and state.run == run
        and state.stage in ("mux", "upload")
        and state.node_id == node_id
    )
