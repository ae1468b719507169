"""Probes of users' sources are bounded: a tarpit costs its account its own share of probe slots
for at most the probe deadline, and nobody else waits behind it (issue 19, point 1).

Real parts: the API over the test's database, real yt-dlp against the loopback media server,
whose `/slow/` answers drip one byte at a time and notice at once when a client closes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from spool.adapters.settings import Settings
from spool.keys import issue
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.s3 import S3Server
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401 - the fixture
from tests.media_helpers import finished_job

DRIP_SECONDS = 1.0
"""The tarpit sends one byte this often: each read succeeds, so a per-read timeout never fires."""
DEADLINE = 15.0
"""The probe deadline of these tests (SPOOL_PROBE_TIMEOUT); time enough for a normal probe on a
loaded machine, well under the tarpit's 2,000 bytes at one a second."""
SHARE = 4
TARPITS = 20


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    """Wait until `check()` holds, looking again every 50 ms; fail after `seconds`."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


def tarpit_page(media_dir: Path) -> str:
    """An HTML page whose head comes first, then a long body (dripped by the `/slow/` URL)."""
    page = media_dir / "tarpit.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Tarpit</title></head><body>" + "x" * 2000 + "</body>"
    )
    return page.name


async def probes_running(c: Cluster) -> int:
    """`spool_probes_running` from the API's own /metrics."""
    answer = await c.client.get("/metrics", headers=c.headers(c.admin_key))
    assert answer.status_code == 200, answer.text
    m = re.search(r"^spool_probes_running (\S+)$", answer.text, re.MULTILINE)
    assert m is not None, answer.text
    return int(float(m.group(1)))


async def other_account(c: Cluster) -> tuple[dict[str, str], str]:
    """A second account's key headers and its id, once the API knows the key."""
    other = await issue(c.store, name="bystander", admin=False)
    headers = {"x-api-key": other.key}

    async def known() -> bool:
        return (await c.client.get("/jobs", headers=headers)).status_code == 200

    await until(known)
    return headers, other.account_id


async def test_twenty_tarpits_from_one_account_stall_no_other_account_and_end_at_the_deadline(
    start_cluster: StartCluster, media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    tarpit = media_server.slow_url(tarpit_page(media_dir), chunk=1, interval=DRIP_SECONDS)
    async with start_cluster(
        with_node=False,
        # /media of a local folder: its range reads run on the loop's default executor.
        storage_url=(tmp_path / "store").as_uri(),
        probe_timeout=DEADLINE,
        probe_share=SHARE,
    ) as c:
        theirs, account_id = await other_account(c)
        played = await finished_job(
            c.store, c.storage, account_id, media_dir / "clip.mp4", duration=2.0
        )
        before = media_server.slow_answers.started

        def attack(n: int) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(
                c.client.post("/jobs", json={"url": f"{tarpit}&n={n}"}, headers=c.headers())
            )

        attacks = [attack(n) for n in range(TARPITS)]

        async def tarpits_held_and_the_rest_answered() -> bool:
            # The refusals are answered without a source read; on a busy machine they may still
            # be on their way when the share's reads have begun.
            answered = sum(t.done() for t in attacks)
            return media_server.slow_answers.open == SHARE and answered == TARPITS - SHARE

        await until(tarpits_held_and_the_rest_answered)
        hanging = [t for t in attacks if not t.done()]
        assert len(hanging) == SHARE  # the rest were refused (their 429s asserted below)

        # The attacker's next probe, on the other surface, is refused too: the share is its.
        more = await c.client.post("/metadata", json={"url": tarpit}, headers=c.headers())
        assert more.status_code == 429, more.text
        assert int(more.headers["retry-after"]) >= 1

        # Meanwhile the other account works as usual: a page probed for a playlist, a
        # metadata read and a range read of its finished file.
        job, meta, media = await asyncio.gather(
            c.client.post("/jobs", json={"url": media_server.url("watch.html")}, headers=theirs),
            c.client.post("/metadata", json={"url": media_server.url("clip.mp4")}, headers=theirs),
            c.client.get(f"/media/{played}", headers={**theirs, "Range": "bytes=0-99"}),
        )
        assert not any(t.done() for t in hanging), "the bystander waited for the tarpits"
        assert job.status_code == 201, job.text
        assert meta.status_code == 200, meta.text
        assert meta.json()["formats"][0]["ext"] == "mp4"
        assert media.status_code == 206, media.text
        assert len(media.content) == 100

        answers = await asyncio.gather(*attacks)

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [429] * (TARPITS - SHARE) + [504] * SHARE
    for a in answers:
        if a.status_code == 429:
            assert a.json()["error"].startswith("Too many sources being read at once")
            assert int(a.headers["retry-after"]) >= 1
        else:
            assert a.json() == {"error": f"Source did not answer within {DEADLINE:g} s"}
    # Only the admitted probes ever reached the tarpit.
    assert media_server.slow_answers.started - before == SHARE


async def test_a_tarpit_probe_is_stopped_at_its_deadline_its_connection_closed_and_its_thread_freed(
    start_cluster: StartCluster, media_server: MediaServer, media_dir: Path
) -> None:
    tarpit = media_server.slow_url(tarpit_page(media_dir), chunk=1, interval=DRIP_SECONDS)
    async with start_cluster(with_node=False, probe_timeout=DEADLINE / 2, probe_share=SHARE) as c:
        warm = await c.client.post(
            "/metadata", json={"url": media_server.url("clip.mp4")}, headers=c.headers()
        )
        assert warm.status_code == 200, warm.text
        probes = [
            asyncio.create_task(
                c.client.post(path, json={"url": f"{tarpit}&n={n}"}, headers=c.headers())
            )
            for n, path in enumerate(["/jobs", "/metadata"] * (SHARE // 2))
        ]

        async def every_probe_in_the_tarpit() -> bool:
            return media_server.slow_answers.open == SHARE

        await until(every_probe_in_the_tarpit, seconds=DEADLINE / 2)
        answers = await asyncio.gather(*probes)
        assert [a.status_code for a in answers] == [504] * SHARE, [a.text for a in answers]

        async def tarpit_sees_every_connection_closed() -> bool:
            return media_server.slow_answers.open == 0

        async def no_probe_thread_busy() -> bool:
            return await probes_running(c) == 0

        # The tarpit would drip for 2,000 s more; a stopped probe's socket is shut, so the
        # server sees the close and the probe's thread returns at once.
        await until(tarpit_sees_every_connection_closed, seconds=DEADLINE)
        await until(no_probe_thread_busy, seconds=DEADLINE)

        # The account has its whole share back.
        again = await c.client.post(
            "/metadata", json={"url": media_server.url("clip.mp4")}, headers=c.headers()
        )
        assert again.status_code == 200, again.text


async def test_a_storage_that_never_answers_its_check_is_refused_at_the_probe_deadline(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    s3_server: S3Server,
) -> None:
    throttled_s3.proxy.pause()  # the check's request never gets through: a tarpit storage
    seconds = DEADLINE / 4
    async with start_cluster(with_node=False, probe_timeout=seconds) as c:
        answer = await c.client.post(
            "/user/s3",
            json={
                "endpoint": throttled_s3.endpoint_url,
                "bucket": throttled_s3.bucket,
                "region": throttled_s3.region,
                "access_key": s3_server.access_key,
                "secret_key": s3_server.secret_key,
            },
            headers=c.headers(),
        )
        shown = await c.client.get("/user/storage", headers=c.headers())

    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": f"Storage check failed: no answer from the storage within {seconds:g} s"
    }
    assert shown.json()["default"] is True


def test_the_probe_settings_come_from_the_environment_and_the_older_name_still_works() -> None:
    env = {"SPOOL_PROBE_TIMEOUT": "7.5", "SPOOL_PROBE_WORKERS": "8", "SPOOL_PROBE_SHARE": "2"}
    settings = Settings.from_env(env)
    assert (settings.probe_timeout, settings.probe_workers, settings.probe_share) == (7.5, 8, 2)
    assert Settings.from_env({"SPOOL_METADATA_TIMEOUT": "12"}).probe_timeout == 12.0
    newer = {"SPOOL_METADATA_TIMEOUT": "12", "SPOOL_PROBE_TIMEOUT": "9"}
    assert Settings.from_env(newer).probe_timeout == 9.0
    assert Settings.from_env({}).probe_timeout == 20.0
