"""A node whose units fail in a row is quarantined, and one short of disk takes no download.

Against an in-process cluster (real PostgreSQL, Redis, S3, media server). A node fails on its
own side here by a mux that raises on it alone (an I/O error no stage expected: the node's
fault); a source that answers 404 fails the other way. Nothing proves a negative by waiting:
a job runs on another node, or the node health reactor is shown to have read past the failures
before the node is shown still taking work. The devices API is asked every tenth of a second,
so these clusters have no rate limit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from arq.worker import Retry

from spool.adapters.job_store import load_job
from spool.adapters.task_store import load_task
from spool.domain import job, node
from spool.domain.node import Capabilities
from spool.domain.node_health import UnitFailure, quarantine_reason
from spool.reactors import stages
from tests.cluster_api_helpers import append_node
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until


async def _shows(c: Cluster, device_id: str, state: str) -> dict[str, Any]:
    async def shown() -> dict[str, Any] | None:
        d = await c.device(device_id)
        return d if d is not None and d["status"] == "online" and d["state"] == state else None

    return await until(shown, seconds=60)


def _break_mux_on(monkeypatch: pytest.MonkeyPatch, broken: set[str]) -> None:
    """Every mux on the nodes in `broken` raises an I/O error (emptied: they work again)."""
    real = stages.mux

    async def mux(state: job.JobState, node_id: str, *args: Any, **kwargs: Any) -> Any:
        if node_id in broken:
            raise OSError(5, "Input/output error")
        return await real(state, node_id, *args, **kwargs)

    monkeypatch.setattr(stages, "mux", mux)


async def _node_events(c: Cluster, node_id: str) -> list[node.Event]:
    return [e.data for e in await c.store.read_stream(node.stream_id(node_id))]


async def _quarantined_by_failing_muxes(
    c: Cluster, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, set[str]]:
    """The cluster's node, quarantined after its mux failed `quarantine_after` times in a row
    (one job's attempts); returns the failed job and the set that breaks the node's mux."""
    node_id = c.settings.node_id
    broken = {node_id}
    _break_mux_on(monkeypatch, broken)
    failing = await c.create(media_server.url("clip.mp4"))
    await c.wait(failing, "Failed")
    await _shows(c, node_id, "quarantined")
    return failing, broken


async def test_a_node_whose_units_fail_in_a_row_is_quarantined_and_another_node_downloads(
    start_cluster: StartCluster, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_cluster(quarantine_after=2, rate_limit=0) as c:
        node_id = c.settings.node_id
        failing, _ = await _quarantined_by_failing_muxes(c, media_server, monkeypatch)
        shown = await _shows(c, node_id, "quarantined")
        assert shown["state_reason"].startswith("quarantined: 2 units failed in a row")
        [quarantined] = [
            e for e in await _node_events(c, node_id) if isinstance(e, node.NodeQuarantined)
        ]
        assert [f.unit for f in quarantined.failures] == [
            job.arq_job_id(failing, 1, "mux", attempt) for attempt in (1, 2)
        ]
        assert all("Input/output error" in f.reason for f in quarantined.failures)

        # A download it took just before it learned of the quarantine goes back to the queue.
        waiting = await c.create(media_server.url("clip.mp4"))
        assert c.node is not None
        with pytest.raises(Retry):
            await c.node.run_stage("download", waiting, 1, 1)

        other = f"{node_id}-other"
        c.start_other_node("other-node", node_id=other)
        later = await c.create(media_server.url("clip.mp4"))
        for job_id in (waiting, later):
            await c.wait(job_id, "Completed")
            events = await c.store.read_stream(job.stream_id(job_id))
            assert {e.metadata.node_id for e in events if e.type == "StageStarted"} == {other}
        await _shows(c, node_id, "quarantined")


async def test_an_admins_release_lets_a_quarantined_node_take_work_again(
    start_cluster: StartCluster, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_cluster(quarantine_after=2, rate_limit=0) as c:
        node_id = c.settings.node_id
        _, broken = await _quarantined_by_failing_muxes(c, media_server, monkeypatch)
        broken.clear()
        answer = await c.client.post(
            f"/api/v1/devices/{node_id}/release", headers=c.headers(c.admin_key)
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["state"] == "active"
        job_id = await c.create(media_server.url("clip.mp4"))
        await c.wait(job_id, "Completed")
        state = await load_job(c.store, job_id)
        assert state is not None and state.node_id == node_id
        released = [e for e in await _node_events(c, node_id) if isinstance(e, node.NodeReleased)]
        assert [r.by for r in released] == ["admin"]


async def test_a_quarantined_nodes_successful_probe_releases_it(
    start_cluster: StartCluster, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_cluster(quarantine_after=2, quarantine_probe_interval=1.0, rate_limit=0) as c:
        node_id = c.settings.node_id
        _, broken = await _quarantined_by_failing_muxes(c, media_server, monkeypatch)
        broken.clear()  # the node works again: only a probe can tell
        probe = await c.create(media_server.url("clip.mp4"))
        await c.wait(probe, "Completed")
        await _shows(c, node_id, "active")
        events = await _node_events(c, node_id)
        unit = job.arq_job_id(probe, 1, "download", 1)
        assert [e.unit for e in events if isinstance(e, node.NodeProbeStarted)] == [unit]
        released = [e for e in events if isinstance(e, node.NodeReleased)]
        assert [(r.by, r.unit) for r in released] == [("probe", unit)]


async def _health_read_past(c: Cluster, job_id: str) -> None:
    """Wait until the node health reactor has applied the job's last event."""
    [*_, last] = await c.store.read_stream(job.stream_id(job_id))

    async def past() -> bool:
        position = await c.pool.fetchval(
            "SELECT position FROM checkpoints WHERE name = 'node-health'"
        )
        return position is not None and position >= last.position

    await until(past, seconds=60)


async def test_a_success_in_between_starts_the_count_again(
    start_cluster: StartCluster, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_cluster(quarantine_after=2, stage_attempts=1, rate_limit=0) as c:
        node_id = c.settings.node_id
        broken = {node_id}
        _break_mux_on(monkeypatch, broken)
        first = await c.create(media_server.url("clip.mp4"))
        await c.wait(first, "Failed")
        broken.clear()
        await c.wait(await c.create(media_server.url("clip.mp4")), "Completed")
        broken.add(node_id)
        second = await c.create(media_server.url("clip.mp4"))
        await c.wait(second, "Failed")
        await _health_read_past(c, second)
        await _shows(c, node_id, "active")  # two failures, but not in a row
        third = await c.create(media_server.url("clip.mp4"))
        await c.wait(third, "Failed")
        await _shows(c, node_id, "quarantined")


async def test_failures_blamed_on_the_source_do_not_count_against_the_node(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(quarantine_after=2, stage_attempts=1, rate_limit=0) as c:
        node_id = c.settings.node_id
        failed = [await c.create(media_server.status_url(404)) for _ in range(3)]
        for job_id in failed:
            await c.wait(job_id, "Failed")
        events = await c.store.read_stream(job.stream_id(failed[-1]))
        [stage_failed] = [e.data for e in events if isinstance(e.data, job.StageFailed)]
        assert (stage_failed.node_id, stage_failed.blame) == (node_id, "source")
        await _health_read_past(c, failed[-1])
        assert (await _shows(c, node_id, "active"))["state_reason"] is None
        good = await c.create(media_server.url("clip.mp4"))
        await c.wait(good, "Completed")
        assert not any(isinstance(e, node.NodeQuarantined) for e in await _node_events(c, node_id))


async def test_a_node_below_its_disk_floor_takes_no_download_and_says_why(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    # A floor of the whole disk: no disk is ever that free.
    async with start_cluster(disk_floor="100%", rate_limit=0) as c:
        node_id = c.settings.node_id
        shown = await _shows(c, node_id, "disk_floor")
        assert "is below the floor of" in shown["state_reason"]
        other = f"{node_id}-other"
        c.start_other_node("other-node", node_id=other, disk_floor="0")
        await _shows(c, other, "active")
        job_id = await c.create(media_server.url("clip.mp4"))
        await c.wait(job_id, "Completed")
        events = await c.store.read_stream(job.stream_id(job_id))
        assert {e.metadata.node_id for e in events if e.type == "StageStarted"} == {other}
        metrics = await c.client.get("/metrics", headers=c.headers(c.admin_key))
        assert 'spool_nodes{state="disk_floor"} 1.0' in metrics.text
        assert 'spool_nodes{state="active"} 1.0' in metrics.text


async def test_the_scheduler_places_no_task_on_a_quarantined_node(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster(rate_limit=0) as c:
        node_id = c.settings.node_id
        await _shows(c, node_id, "active")
        failures = [UnitFailure(unit="job-1:1:mux:1", reason="Internal error")]
        quarantined = node.NodeQuarantined(
            node_id=node_id, reason=quarantine_reason(failures), failures=failures
        )
        await append_node(c.store, c.runner, node_id, quarantined)
        c.start_scheduler()
        answer = await c.client.post(
            "/api/v1/tasks",
            json={"task_type": "echo", "payload": {"message": "hello"}},
            headers=c.headers(c.admin_key),
        )
        assert answer.status_code == 201, answer.text
        task_id = answer.json()["data"]["task_id"]

        async def waits_for_the_release() -> str | None:
            state = await load_task(c.store, task_id)
            assert state is not None and state.status == "queued", state
            return state.reason if state.reason and "is quarantined" in state.reason else None

        assert node_id in await until(waits_for_the_release, seconds=60)
        await c.client.post(f"/api/v1/devices/{node_id}/release", headers=c.headers(c.admin_key))

        async def succeeded() -> bool:
            state = await load_task(c.store, task_id)
            return state is not None and state.status == "success"

        await until(succeeded, seconds=60)


def test_quarantine_and_release_are_decided_on_the_nodes_own_facts() -> None:
    at = datetime.now(UTC)
    started = node.NodeStarted(
        node_id="n", hostname="h", ip="127.0.0.1", role="worker", tags=[],
        capabilities=Capabilities(cpu_count=1, memory_total_gb=1.0, storage_total_gb=1.0),
        concurrency={},
    )  # fmt: skip
    state = node.fold([(started, at, 1)])
    assert state is not None
    failures = [UnitFailure(unit="j:1:mux:1", reason="Internal error")]
    [quarantined_event] = node.quarantine(state, failures, "1 unit failed")
    quarantined = node.evolve(state, quarantined_event, at, 2)
    assert quarantined is not None and quarantined.quarantined_since == at
    assert node.quarantine(quarantined, failures, "again") == []  # a replay records nothing
    # A restart keeps the quarantine.
    restarted = node.evolve(quarantined, started, at, 3)
    assert restarted is not None and restarted.quarantine_reason == "1 unit failed"
    # Only the probe's own run, completed, releases it.
    assert node.probe_succeeded(restarted, "j", 2) == []
    [probe] = node.start_probe(restarted, "j:2:download:1", "j", 2)
    probing = node.evolve(restarted, probe, at, 4)
    assert probing is not None
    assert node.start_probe(probing, "j:2:download:1", "j", 2) == []  # a replay: nothing
    assert node.probe_succeeded(probing, "j", 1) == []
    assert node.probe_succeeded(probing, "k", 2) == []
    [released] = node.probe_succeeded(probing, "j", 2)
    assert released == node.NodeReleased(node_id="n", by="probe", unit="j:2:download:1")
    free = node.evolve(probing, released, at, 5)
    assert free is not None and free.quarantined_since is None and free.probe is None
    assert node.release(free) == []
