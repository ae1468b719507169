"""A node starting sweeps its work folder of what no current unit needs, and keeps the rest.

A node that was killed, or cut off while its units were handed on, finds the run folders it
left (`<data_dir>/work/<job>/<run>/`) when it starts again. The ones of jobs that ended, that
the database does not know, or that moved on to another node go before it takes any unit;
the run it downloaded and has yet to upload stays, and its upload completes from it.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import pytest

from spool.adapters.job_store import jobs
from spool.assembly import PIPELINE, PROJECTIONS
from spool.domain import job
from spool.domain.events import Event, Metadata
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer

STALE_BYTES = 1000
"""The size of each file planted for a stale run."""


def _plant(path: Path) -> Path:
    """A file of `STALE_BYTES` at `path`, as a run that was cut short left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * STALE_BYTES)
    return path


async def _muxed_on(cluster: Cluster, job_id: str, node_id: str, output: Path) -> None:
    """Record the job as downloaded and muxed on `node_id` into `output`, as that node would:
    what is left is its upload, on that node."""
    size = output.stat().st_size
    media = job.MediaFile(path=str(output), kind="av", size=size)
    meta = Metadata(actor=f"node:{node_id}", node_id=node_id)
    downloaded = job.DownloadCompleted(
        run=1, attempt=1, node_id=node_id, files=[media], bytes=size, seconds=0.1
    )
    muxed = job.MuxCompleted(run=1, attempt=1, node_id=node_id, output=media, seconds=0.1)
    for name, done in (("download", downloaded), ("mux", muxed)):

        def decide(state: job.JobState, name: job.Stage = name, done: Event = done) -> list[Event]:
            return [*job.start_stage(state, name, state.run, state.attempt, node_id), done]

        await jobs(cluster.store).execute(job_id, decide, meta)


async def test_a_starting_node_sweeps_stale_runs_and_keeps_the_one_awaiting_its_upload(
    start_cluster: StartCluster,
    media_server: MediaServer,
    media_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spool.node")
    # No reconciler: the job handed to another node stays there, as if that node ran it.
    async with start_cluster(with_node=False, with_reactors=False) as cluster:
        cluster.start(PROJECTIONS, PIPELINE)
        me = cluster.settings.node_id
        work = cluster.settings.data_dir / "work"
        url = media_server.url("clip.mp4")
        current, ended, elsewhere = [await cluster.create(url, filename=n) for n in "abc"]
        output = work / current / "1" / "output.mp4"
        output.parent.mkdir(parents=True)
        shutil.copyfile(media_dir / "clip.mp4", output)
        await _muxed_on(cluster, current, me, output)
        answer = await cluster.client.delete(f"/jobs/{ended}", headers=cluster.headers())
        assert answer.status_code == 200, answer.text
        _plant(work / ended / "1" / "source.mp4")
        await _muxed_on(
            cluster, elsewhere, "node-elsewhere", _plant(work / elsewhere / "1" / "output.mp4")
        )
        unknown = str(uuid.uuid4())
        _plant(work / unknown / "1" / "source.mp4.part")
        task_file = _plant(work / "tasks" / "some-task" / "out.txt")

        cluster.start_node()
        done = await cluster.wait(current, "Completed", "Failed", seconds=60)

        assert done["status"] == "Completed", done  # uploaded from the run it kept
        assert sorted(p.name for p in work.iterdir()) == ["tasks"]
        assert task_file.exists()  # the tasks' folder is not the jobs'
        swept = [r.getMessage() for r in caplog.records if "work folder swept" in r.getMessage()]
        assert swept == [
            f"work folder swept: 3 stale run folder(s) removed ({3 * STALE_BYTES} bytes), "
            "1 kept for this node's current units or a retry from mux or upload"
        ]
