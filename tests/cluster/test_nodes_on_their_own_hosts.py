"""Worker nodes on hosts of their own (network namespaces, tests/cluster/multihost.py), each
reaching the database host and the API's host through its own link: work spreads over them,
each job's files stay on the node that downloaded them, and a node that dies loses nothing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from spool.domain import node
from tests.cluster.multihost import TIMINGS, MultiHost
from tests.cluster.network import tbf_unavailable
from tests.faults.checks import assert_log_and_bucket_clean
from tests.fixtures.media import make_clip

BUSY = 9
"""More held downloads than the three nodes' download slots (two each, `spool worker`'s
default): every node is busy with two."""

LEASE = timedelta(seconds=float(TIMINGS["SPOOL_LEASE_TTL"]))
PASS = timedelta(seconds=float(TIMINGS["SPOOL_RECONCILE_INTERVAL"]))
TAKEOVER = LEASE + 2 * PASS + timedelta(seconds=5)
"""The longest from a dead node's last heartbeat to its unit starting on another node: the
lease, up to two reconcile passes (docs/architecture.md, Leases), and 5 s for the pipeline to
dispatch the retry and a node to start it on a loaded machine."""

UPLINK_MBIT = 1.0
"""The throttled uplink of the node killed mid-upload: the clip takes it seconds to send."""


async def _assert_all_completed(cluster: MultiHost, ended: dict[str, str]) -> None:
    others = [j for j, status in ended.items() if status != "Completed"]
    assert others == [], (
        f"{len(others)} not completed; {others[0]}:\n{await cluster.story(others[0])}"
    )


async def _assert_nothing_lost(cluster: MultiHost, jobs: list[str]) -> None:
    await assert_log_and_bucket_clean(
        cluster.database_url, cluster.store, cluster.db.objects(), jobs
    )


def _node_of(events: list[dict[str, Any]], *types: str) -> list[str]:
    """The node each event of `types` names, in the job's order."""
    return [e["data"]["node_id"] for e in events if e["type"] in types]


def _last_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's events from the start of its last download attempt on."""
    starts = [
        i
        for i, e in enumerate(events)
        if e["type"] == "StageStarted" and e["data"]["stage"] == "download"
    ]
    return events[starts[-1] :]


async def test_sixty_jobs_spread_over_three_nodes_and_each_stays_on_its_downloads_node(
    cluster: MultiHost,
) -> None:
    url = cluster.db.media.url("clip.mp4")
    jobs = await cluster.create_jobs({"url": url, "filename": f"clip{i}"} for i in range(60))

    ended = await cluster.wait_ended(jobs, seconds=240)

    await _assert_all_completed(cluster, ended)
    histories = {j: await cluster.events(j) for j in jobs}
    downloaded_on = {j: _node_of(_last_run(h), "DownloadCompleted") for j, h in histories.items()}
    assert {n for nodes in downloaded_on.values() for n in nodes} == set(cluster.nodes)
    for job_id, history in histories.items():
        last = _last_run(history)
        (node,) = downloaded_on[job_id]
        # Every stage of the run that completed, its start and its end, names that node.
        assert set(_node_of(last, "StageStarted", "MuxCompleted", "JobCompleted")) == {node}, last
    await _assert_nothing_lost(cluster, jobs)


SHARED = (
    "SPOOL_DATABASE_URL",
    "SPOOL_REDIS_URL",
    "SPOOL_STORAGE_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SPOOL_SECRET_KEY",
)
"""What every process of a cluster must be given alike, on every machine."""

TEST_ONLY = {
    **dict.fromkeys(TIMINGS, "timings shortened so that tests wait less"),
    "SPOOL_RATE_LIMIT": "one test client submits far faster than a user may",
    "SPOOL_URL_ALLOWLIST": "the test's media server is on a private address, refused by default",
    "SPOOL_ARCHIVE_SKIPS": "tests fetch one clip again and again; production skips archived items",
    "SPOOL_DATABASE_POOL_SIZE": "clusters of test processes share one server's 100 connections",
}
"""What the harness gives its processes that a production cluster leaves at its default."""

COMPOSE_SERVICES = {"api": "api", "reactors": "reactors", "node1": "worker-1", "node2": "worker-2"}
"""The harness's process each compose service is the production form of."""

COMPOSE_ADDS = {"api": {"SPOOL_DATA_DIR"}, "reactors": {"SPOOL_DATA_DIR"}}
"""What compose gives that the harness does not: the harness leaves the API's and the reactors'
data dir (the API's media cache) at its default, in the test machine's home; a container
keeps it on a volume of its own."""


def _given(pid: int) -> dict[str, str]:
    """What the harness set in a process's environment: what it holds that this process does
    not hold alike (pytest's PYTEST_* change from test to test)."""
    env = psutil.Process(pid).environ()
    return {k: v for k, v in env.items() if os.environ.get(k) != v and not k.startswith("PYTEST_")}


async def test_compose_gives_each_service_the_environment_its_host_ran_with(
    cluster: MultiHost,
) -> None:
    """compose.yaml is the production form of this cluster: each service is given every
    variable its process here was given (less the test's own, `TEST_ONLY`), and no other but
    its data dir; what is shared here is shared there, and what is a node's own is its own."""
    ran = {
        "api": _given(cluster.api.procs.procs["api"].pid),
        "reactors": _given(cluster.api.procs.procs["reactors"].pid),
        **{name: _given(h.procs.procs[name].pid) for name, h in cluster.nodes.items()},
    }
    for name in SHARED:
        assert len({env[name] for env in ran.values()}) == 1, f"{name} differs between hosts"
    for own in ("SPOOL_NODE_ID", "SPOOL_DATA_DIR", "TMPDIR"):
        assert len({ran[n][own] for n in cluster.nodes}) == len(cluster.nodes), own

    compose = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())
    services = compose["services"]
    for process, service in COMPOSE_SERVICES.items():
        # A container's /tmp is its own, as each node's temp dir is here.
        needed = set(ran[process]) - set(TEST_ONLY) - {"TMPDIR"}
        given = set(services[service]["environment"])
        assert needed <= given, f"{service} lacks {needed - given}"
        assert given - needed <= COMPOSE_ADDS.get(process, set()), f"{service}: {given - needed}"
    for name in SHARED:
        values = {str(s["environment"][name]) for s in services.values() if s.get("build")}
        assert len(values) == 1, f"compose services differ in {name}: {values}"
    node_ids = [services[s]["environment"]["SPOOL_NODE_ID"] for s in ("worker-1", "worker-2")]
    assert len(set(node_ids)) == 2


async def test_the_devices_list_shows_each_node_at_its_own_hosts_address(
    cluster: MultiHost,
) -> None:
    answer = await cluster.client.get("/api/v1/devices")
    assert answer.status_code == 200, answer.text

    shown = {d["device_id"]: d["ip_address"] for d in answer.json()["data"]}

    assert shown == {name: host.address for name, host in cluster.nodes.items()}


async def test_a_node_killed_mid_download_has_its_downloads_taken_over_by_another(
    cluster: MultiHost,
) -> None:
    """A node that loses power (SIGKILL of every process on its host) stops beating, so its
    leases on the downloads it runs are no longer renewed: once the last heartbeat listing them
    is `SPOOL_LEASE_TTL` old (5 s here, the node timeout of 15 s by default), the reconciler's
    next pass (`SPOOL_RECONCILE_INTERVAL`, 2 s here, 10 s by default) fails each so that its
    retry is queued for any node. The dead worker's arq in-progress key is never waited on."""
    held, gate = cluster.db.media.held_url("clip.mp4")
    jobs = await cluster.create_jobs({"url": held, "filename": f"held{i}"} for i in range(BUSY))
    victims = await _downloading_on(cluster, jobs, "node1", count=2)

    cluster.nodes["node1"].kill()
    gate.set()  # the downloads still running finish; the retried ones run at full speed

    ended = await cluster.wait_ended(jobs, seconds=120)

    await _assert_all_completed(cluster, ended)
    for job_id in victims:
        history = await cluster.events(job_id)
        failed = [e["data"] for e in history if e["type"] == "StageFailed"]
        assert [(f["stage"], f["node_id"], f["lease_expired"]) for f in failed] == [
            ("download", "node1", True)
        ], failed
        (completed_on,) = _node_of(history, "JobCompleted")
        assert completed_on in {"node2", "node3"}
        await _assert_taken_over_in_time(cluster, job_id, history, "node1")
    await _assert_nothing_lost(cluster, jobs)


async def test_a_node_killed_mid_upload_has_its_unit_taken_over_and_stored_once(
    cluster: MultiHost, cluster_media: Path
) -> None:
    """The node uploading a job's file loses power halfway (its uplink is throttled so that
    the upload lasts seconds). The file it muxed is gone with it, so once its lease on the
    upload expires the job starts over from download on another node; the bucket ends with
    that node's object alone."""
    unavailable = tbf_unavailable()
    if unavailable is not None:
        pytest.skip(f"a slow upload needs a rate limit on the node's link: {unavailable}")
    if not (cluster_media / "long.mp4").exists():
        make_clip(cluster_media / "long.mp4", 4.0, width=640, height=360)  # about 1 MB
    held, gate = cluster.db.media.held_url("long.mp4")
    (job_id,) = await cluster.create_jobs([{"url": held, "filename": "mid-upload"}])
    victim = await _stage_started_on(cluster, job_id, "download")
    host = cluster.nodes[victim]
    host.link.cap(UPLINK_MBIT)
    try:
        gate.set()
        await _stage_started_on(cluster, job_id, "upload")
        host.kill()
    finally:
        host.link.unslow()

    ended = await cluster.wait_ended([job_id], seconds=120)

    await _assert_all_completed(cluster, ended)
    history = await cluster.events(job_id)
    failed = [e["data"] for e in history if e["type"] == "StageFailed"]
    assert [(f["stage"], f["node_id"], f["lease_expired"]) for f in failed] == [
        ("upload", victim, True)
    ], await cluster.story(job_id)
    assert f"lease of node {victim} on upload expired" in failed[0]["reason"]
    assert failed[0]["retry_stage"] == "download"  # its muxed file went with it
    (completed_on,) = _node_of(history, "JobCompleted")
    assert completed_on != victim
    await _assert_taken_over_in_time(cluster, job_id, history, victim)
    await _assert_nothing_lost(cluster, [job_id])


async def _assert_taken_over_in_time(
    cluster: MultiHost, job_id: str, history: list[dict[str, Any]], dead: str
) -> None:
    """The job's unit was handed on no sooner than its lease allowed and started elsewhere
    within `TAKEOVER`, both measured from the dead node's last heartbeat in the log."""
    last_beat = await _last_heartbeat(cluster, dead)
    (failed_at,) = [_at(e) for e in history if e["type"] == "StageFailed"]
    restarted_at = next(
        _at(e) for e in history if e["type"] == "StageStarted" and _at(e) > failed_at
    )
    assert failed_at - last_beat >= LEASE, (last_beat, failed_at)
    assert restarted_at - last_beat <= TAKEOVER, (last_beat, restarted_at)
    print(f"{job_id}: taken over {restarted_at - last_beat} after {dead}'s last heartbeat")


async def _last_heartbeat(cluster: MultiHost, node_id: str) -> datetime:
    today = datetime.now(UTC).date()
    streams = [node.heartbeat_stream_id(node_id, today - timedelta(days=d)) for d in (0, 1)]
    at: datetime = await cluster.store.pool.fetchval(
        "SELECT max(recorded_at) FROM events WHERE stream_id = ANY($1::text[])", streams
    )
    return at


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["recorded_at"])


async def _stage_started_on(cluster: MultiHost, job_id: str, stage: str) -> str:
    """Wait until `stage` of the job has started; the node it started on."""
    deadline = time.monotonic() + 90
    while True:
        history = await cluster.events(job_id)
        started = [e for e in history if e["type"] == "StageStarted"]
        if on := [e["data"]["node_id"] for e in started if e["data"]["stage"] == stage]:
            return str(on[-1])
        assert time.monotonic() < deadline, history
        await asyncio.sleep(0.1)


async def _downloading_on(cluster: MultiHost, jobs: list[str], node: str, count: int) -> list[str]:
    """Wait until `count` of `jobs` are downloading on `node`; those jobs."""
    deadline = time.monotonic() + 90
    while True:
        found = []
        for job_id in jobs:
            history = await cluster.events(job_id)
            if _node_of(history, "StageStarted") == [node]:
                found.append(job_id)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{node} downloads {found}"
        await asyncio.sleep(0.2)


OUTAGE_SECONDS = 60.0
"""How long the link stays down, as issue 22 asks: far past the node's lease
(`SPOOL_LEASE_TTL`, 5 s here), the reconciler's passes, the node's stall timeout
(`SPOOL_STALL_TIMEOUT`, 10 s) and PostgreSQL's hold on its sessions
(`SPOOL_DATABASE_PEER_TIMEOUT`, 5 s), so the node comes back to a cluster that has long given
its work to others and closed what it left open."""


async def test_a_node_cut_off_mid_download_is_replaced_then_rejoins_and_takes_new_work(
    cluster: MultiHost,
) -> None:
    """node1's link goes down while it downloads: the other nodes are given its downloads
    once node1 is lost. node1 rides the outage out (its database calls fail with "No route to
    host" and are tried again); when the link comes back its downloads finish late and are
    refused ("stale": the attempt is no longer current), it is online again and takes new
    work. An upload cut off half-made is the next test's."""
    held, gate = cluster.db.media.held_url("clip.mp4")
    jobs = await cluster.create_jobs({"url": held, "filename": f"cut{i}"} for i in range(BUSY))
    victims = await _downloading_on(cluster, jobs, "node1", count=2)

    node1 = cluster.nodes["node1"]
    node1.link.cut()
    cut_at = time.monotonic()
    await _until_not_online(cluster, "node1")
    gate.set()  # the other nodes' downloads, and node1's once taken over, finish at once
    ended = await cluster.wait_ended(jobs, seconds=120)
    # The outage lasts its length even when the jobs were done sooner: what node1 does
    # when its link comes back must not depend on how fast node2 was.
    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
    node1.link.mend()

    await _assert_all_completed(cluster, ended)
    for job_id in victims:
        history = await cluster.events(job_id)
        assert _node_of(history, "DownloadCompleted") != ["node1"]
        (completed_on,) = _node_of(history, "JobCompleted")
        assert completed_on in {"node2", "node3"}
    # Back on the network, node1 beats again and takes its share of new downloads: the other
    # nodes' slots are all held.
    await cluster.wait_online(["node1"])
    again, more = cluster.db.media.held_url("clip.mp4")
    later = await cluster.create_jobs({"url": again, "filename": f"back{i}"} for i in range(BUSY))
    await _downloading_on(cluster, later, "node1", count=1)
    more.set()
    ended = await cluster.wait_ended(later, seconds=120)
    await _assert_all_completed(cluster, ended)
    await _assert_nothing_lost(cluster, jobs + later)


async def _until_not_online(cluster: MultiHost, node: str) -> None:
    deadline = time.monotonic() + 60
    while node in await cluster.online():
        assert time.monotonic() < deadline, f"{node} still online"
        await asyncio.sleep(0.2)


UPLOAD_CAP_MBIT = 16.0
"""node1's sending rate in the test of a cut mid-upload: its ~10 MiB upload takes about five
seconds, long enough to cut the link in the middle of it."""


async def test_a_node_cut_off_mid_upload_aborts_its_half_made_upload_when_it_comes_back(
    cluster: MultiHost,
) -> None:
    """node1's link goes down in the middle of a multipart upload, for `OUTAGE_SECONDS` (long
    enough for node1 to be lost and its job handed on, see above): the job starts over from
    download on another node and completes there. When the link comes back, node1's next
    heartbeat finds the job moved on; its upload stops and is aborted, so the bucket keeps
    no half-made upload (S3's ListMultipartUploads lists none), and the run's files leave
    node1's disk. The other nodes are drained until node1 is lost, so that the job's first
    download, and its upload, are node1's."""
    node1 = cluster.nodes["node1"]
    others = [n for n in cluster.nodes if n != "node1"]
    reason = tbf_unavailable()
    if reason is not None:
        pytest.skip(f"slowing node1's upload needs tc tbf: {reason}")
    node1.link.cap(UPLOAD_CAP_MBIT)
    try:
        for name in others:
            await _drain(cluster, name, "drain", until="draining")
        (job_id,) = await cluster.create_jobs(
            [{"url": cluster.db.media.url("dense.mp4"), "filename": "cut-upload"}]
        )
        await _until(cluster, "node1's multipart upload is begun", cluster.db.unfinished_uploads)
        # Cut only once a heartbeat has reported the upload. Else the reconciler's first verdict
        # is "worker lost", which queues upload attempt 2 on node1; after the takeover, the
        # upload attempt 2 of another node has the same queue id (`job.arq_job_id`) and waits
        # behind it until node1 is back.
        await _reported_running(cluster, "node1", f"{job_id}:1:upload:1")

        node1.link.cut()
        cut_at = time.monotonic()
        await _until_not_online(cluster, "node1")
        for name in others:
            await _drain(cluster, name, "undrain", until="active")
        ended = await cluster.wait_ended([job_id], seconds=120)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
        node1.link.mend()

        await _assert_all_completed(cluster, ended)
        history = await cluster.events(job_id)
        assert _node_of(history, "StageStarted")[:3] == ["node1"] * 3  # download, mux, upload
        (completed_on,) = _node_of(history, "JobCompleted")
        assert completed_on in others
        await _until(
            cluster, "node1 aborts its upload", lambda: not cluster.db.unfinished_uploads()
        )
        work = node1.procs.root / "nodes" / "node1" / "work"
        await _until(cluster, "node1 frees the run's files", lambda: not (work / job_id).exists())
        # Once, under the job's first name: the bucket is the module's, other tests' files too.
        assert [o for o in cluster.db.objects() if "cut-upload" in o] == [
            f"media/{_key_of(history)}"
        ]
        await _assert_nothing_lost(cluster, [job_id])
    finally:
        node1.link.unslow()
        for name in others:
            await _drain(cluster, name, "undrain", until="active")


async def _drain(cluster: MultiHost, node: str, command: str, *, until: str) -> None:
    """POST /api/v1/devices/{node}/drain (or undrain), then wait until the device list shows
    `until`: the row the node reads before each download."""
    answer = await cluster.client.post(f"/api/v1/devices/{node}/{command}")
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while True:
        shown = await cluster.client.get(f"/api/v1/devices/{node}")
        assert shown.status_code == 200, shown.text
        if shown.json()["data"]["state"] == until:
            return
        assert time.monotonic() < deadline, shown.text
        await asyncio.sleep(0.2)


async def _reported_running(cluster: MultiHost, node: str, unit: str) -> None:
    """Wait until `node`'s status (its last heartbeat, as projected) lists `unit` running."""
    deadline = time.monotonic() + 30
    while True:
        answer = await cluster.client.get(f"/api/v1/devices/{node}/status")
        assert answer.status_code == 200, answer.text
        if unit in answer.json()["data"]["current"]["running"]:
            return
        assert time.monotonic() < deadline, answer.text
        await asyncio.sleep(0.2)


async def _until(cluster: MultiHost, what: str, check: Callable[[], object]) -> None:
    """Wait until `check()` holds: 90 s, for a host whose connections come back from a cut
    link only as fast as TCP's retransmission backoff lets them."""
    deadline = time.monotonic() + 90
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting until {what}: {cluster.logs()}"
        await asyncio.sleep(0.1)


def _key_of(history: list[dict[str, Any]]) -> str:
    (completed,) = [e["data"] for e in history if e["type"] == "JobCompleted"]
    key: str = completed["key"]
    return key
