"""Start and stop that never hang: the real `spool` processes, their ports, databases and signals.

A start that cannot bind its port or reach its database ends within 10 s with one line saying
why, leaving nothing running. SIGINT or SIGTERM stops a process within 10 s, interrupting the
stage it runs; the interruption is recorded (not as a failure) and the work resumes on the
next start. A second SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from spool.embedded import free_port
from tests.fixtures.media import MediaServer, make_clip
from tests.fixtures.processes import SpoolProcesses, wait_http

KEY = "sk_lifecycle_test_key_0123456789abcdef"
HEADERS = {"x-api-key": KEY}


def _ended_within(proc: subprocess.Popen[bytes], seconds: float) -> float:
    """Seconds `proc` took to end; fails the test past `seconds`."""
    started = time.monotonic()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args!r} still running {seconds:g} s later")
    return time.monotonic() - started


def _processes_of(data_dir: Path) -> list[str]:
    """Command lines of the processes still running over `data_dir` (a redis-server, say)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(cmdline)
    return found


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("Error: ")]


@pytest.mark.parametrize("command", ["up", "api"])
def test_a_taken_port_ends_the_start_within_10_s_saying_so_and_starts_nothing(
    tmp_path: Path, command: str
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        procs = SpoolProcesses(tmp_path, {})
        # Embedded defaults: were anything started before the port is tried, it would be
        # PostgreSQL and a redis-server under the data dir.
        proc = procs.start("up", command, "--port", str(port), "--data-dir", str(data_dir))
        _ended_within(proc, 10)
    log = procs.log("up")
    assert proc.returncode == 1, log
    taken_line = f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
    assert _error_lines(log) == [taken_line]
    assert "Traceback" not in log and "spool is up" not in log
    assert _processes_of(data_dir) == []


@pytest.mark.parametrize(
    ("server", "listener", "line"),
    [
        ("database", "closed", "cannot reach the database at {}: connection refused"),
        ("database", "silent", "cannot reach the database at {}: no answer within 3 s"),
        ("redis", "closed", "cannot reach Redis at {}: connection refused"),
        ("redis", "silent", "cannot reach Redis at {}: no answer within 3 s"),
    ],
    ids=["database-closed", "database-silent", "redis-closed", "redis-silent"],
)
def test_spool_up_with_an_unreachable_database_or_redis_exits_within_10_s_saying_so(
    tmp_path: Path, database_url: str, server: str, listener: str, line: str
) -> None:
    """A closed port refuses at once; a server that accepts and never answers is given a few
    seconds (3)."""
    data_dir = tmp_path / "data"
    with socket.socket() as silent:
        if listener == "silent":
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            port = silent.getsockname()[1]
        else:
            port = free_port()
        unreachable = f"{server}://spool:hunter2@127.0.0.1:{port}/"
        urls = {
            "database": ["--database-url", unreachable.replace("database:", "postgresql:")],
            "redis": ["--database-url", database_url, "--redis-url", f"{unreachable}0"],
        }[server]
        procs = SpoolProcesses(tmp_path, {})
        proc = procs.start(
            "up", "up", "--port", str(free_port()), "--data-dir", str(data_dir), *urls
        )
        _ended_within(proc, 10)
    log = procs.log("up")
    assert proc.returncode == 1, log
    assert _error_lines(log) == ["Error: " + line.format(f"127.0.0.1:{port}")]
    assert "hunter2" not in log and "Traceback" not in log
    assert _processes_of(data_dir) == []  # the embedded Redis it would start next, for one


@pytest.fixture
def dripping_media(media_dir: Path) -> Iterator[MediaServer]:
    """The suite's media on a server of this test's own, whose `/slow/` answers it can hurry."""
    server = MediaServer(media_dir).start()
    try:
        yield server
    finally:
        server.stop()


def _cluster(tmp_path: Path, database_url: str, redis_url: str) -> SpoolProcesses:
    return SpoolProcesses(
        tmp_path,
        {
            "SPOOL_API_KEY": KEY,
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_DATA_DIR": str(tmp_path / "data"),
            "SPOOL_URL_ALLOWLIST": "127.0.0.1/32",
            "SPOOL_NODE_ID": f"lifecycle-{uuid.uuid4().hex[:8]}",
            "SPOOL_RECONCILE_INTERVAL": "1",
            "SPOOL_RATE_LIMIT": "0",
        },
    )


def _start_up(procs: SpoolProcesses, port: int) -> str:
    proc = procs.start("up", "up", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", 60, proc)
    return base


def _downloading(base: str, url: str) -> str:
    """A new job of `url`, once its download has fetched some bytes."""
    created = httpx.post(f"{base}/jobs", json={"url": url}, headers=HEADERS)
    assert created.status_code == 201, created.text
    job_id: str = created.json()["job_id"]
    deadline = time.monotonic() + 30
    while True:
        got = httpx.get(f"{base}/jobs/{job_id}", headers=HEADERS).json()
        progress = got.get("progress") or {}
        if got["step"] == "Downloading" and (progress.get("bytes") or 0) > 0:
            return job_id
        assert got["status"] in ("Pending", "Processing"), got
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def _history(base: str, job_id: str) -> list[dict[str, object]]:
    page = httpx.get(f"{base}/jobs/{job_id}/events?limit=1000", headers=HEADERS)
    assert page.status_code == 200, page.text
    events: list[dict[str, object]] = page.json()["events"]
    return events


def _stop_mid_download(
    procs: SpoolProcesses, port: int, media: MediaServer, stop_signal: signal.Signals
) -> str:
    """Start `spool up`, give it a dripping download, stop it with `stop_signal` while it
    downloads; the job's id, once the process has ended within 10 s, cleanly."""
    base = _start_up(procs, port)
    # A few KiB every quarter second: the 2 s clip would take about half a minute.
    job_id = _downloading(base, media.slow_url("clip.mp4", chunk=4096, interval=0.25))
    proc = procs.procs["up"]
    proc.send_signal(stop_signal)
    _ended_within(proc, 10)
    log = procs.log("up", tail=100_000)
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "rename" not in log
    # The partial download is gone with it.
    assert not any((procs.root / "data" / "work" / job_id).rglob("*.*"))
    return job_id


def test_sigterm_during_a_throttled_download_ends_within_10_s_recording_the_interruption(
    tmp_path: Path, fresh_database_url: str, redis_url: str, dripping_media: MediaServer
) -> None:
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    with procs.kept_logs():
        job_id = _stop_mid_download(procs, free_port(), dripping_media, signal.SIGTERM)
    history = asyncio.run(_logged(fresh_database_url, job_id))
    assert "StageFailed" not in [t for t, _ in history], history
    assert history[-1] == (
        "StageInterrupted",
        {
            "stage": "download",
            "run": 1,
            "attempt": 1,
            "node_id": procs.env["SPOOL_NODE_ID"],
            "reason": "shutdown",
        },
    )


def test_ctrl_c_during_a_throttled_download_ends_within_10_s_and_the_job_completes_after_restart(
    tmp_path: Path, fresh_database_url: str, redis_url: str, dripping_media: MediaServer
) -> None:
    """Ctrl-C cuts the download off; the attempt is recorded as interrupted by the shutdown,
    spends none of the job's retries, leaves no partial file, and the next start downloads
    again and completes the job."""
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    port = free_port()
    with procs.kept_logs():
        job_id = _stop_mid_download(procs, port, dripping_media, signal.SIGINT)

        dripping_media.slow_answers.dripping = False
        base = _start_up(procs, port)
        deadline = time.monotonic() + 60
        while (got := httpx.get(f"{base}/jobs/{job_id}", headers=HEADERS).json())["status"] in (
            "Pending",
            "Processing",
        ):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert got["status"] == "Completed", got
        assert got["download_retries"] == 0, got
        history = _history(base, job_id)
        types = [e["type"] for e in history]
        assert "StageFailed" not in types, types
        (interrupted,) = [e["data"] for e in history if e["type"] == "StageInterrupted"]
        assert interrupted == {
            "stage": "download",
            "run": 1,
            "attempt": 1,
            "node_id": procs.env["SPOOL_NODE_ID"],
            "reason": "shutdown",
        }
        started = [e["data"] for e in history if e["type"] == "StageStarted"]
        assert [(s["stage"], s["attempt"]) for s in started] == [  # type: ignore[index]
            ("download", 1),
            ("download", 2),
            ("mux", 1),
            ("upload", 1),
        ]
        procs.stop("up", seconds=10)
        assert procs.procs["up"].returncode == 0, procs.log("up")


def test_ctrl_c_at_a_terminal_during_a_mux_kills_ffmpeg_and_records_the_interruption(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group. FFmpeg, in a group of
    its own, is not hit by it (it would die and the mux would count as failed): Spool stops it,
    and nothing of it is left running."""
    make_clip(tmp_path / "media" / "long.mp4", 30.0)  # x265 takes seconds over it
    media = MediaServer(tmp_path / "media").start()
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    with procs.kept_logs(), contextlib.ExitStack() as cleanup:
        cleanup.callback(media.stop)
        base = _start_up(procs, free_port())
        created = httpx.post(
            f"{base}/jobs",
            json={"url": media.url("long.mp4"), "video_codec": "h265"},
            headers=HEADERS,
        )
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 60
        while (got := httpx.get(f"{base}/jobs/{job_id}", headers=HEADERS).json())[
            "step"
        ] != "Muxing" or not _ffmpeg_of(tmp_path):
            assert got["status"] in ("Pending", "Processing") and time.monotonic() < deadline, got
            time.sleep(0.05)
        proc = procs.procs["up"]
        os.killpg(proc.pid, signal.SIGINT)
        _ended_within(proc, 10)
        assert proc.returncode == 0, procs.log("up")
        assert _ffmpeg_of(tmp_path) == []
    history = asyncio.run(_logged(fresh_database_url, job_id))
    types = [t for t, _ in history]
    assert "StageFailed" not in types, types
    assert [d for t, d in history if t == "StageInterrupted"] == [
        {
            "stage": "mux",
            "run": 1,
            "attempt": 1,
            "node_id": procs.env["SPOOL_NODE_ID"],
            "reason": "shutdown",
        }
    ]
    workdir = tmp_path / "data" / "work" / job_id / "1"
    assert not list(workdir.glob("output.*"))  # FFmpeg's partial output
    assert list(workdir.glob("media.*"))  # the download, for the mux to run again from


async def _logged(database_url: str, job_id: str) -> list[tuple[str, dict[str, object]]]:
    """A job's events as stored: (type, data) in order."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT type, data::text FROM events WHERE stream_id = $1 ORDER BY version",
            f"job-{job_id}",
        )
    finally:
        await conn.close()
    return [(r["type"], json.loads(r["data"])) for r in rows]


def _ffmpeg_of(root: Path) -> list[str]:
    """The FFmpeg processes working under `root` (a node's data dir is in its arguments)."""
    return [c for c in _processes_of(root) if "ffmpeg" in c]


def test_a_second_sigint_stops_spool_up_at_once(
    tmp_path: Path, fresh_database_url: str, redis_url: str, dripping_media: MediaServer
) -> None:
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    with procs.kept_logs():
        base = _start_up(procs, free_port())
        _downloading(base, dripping_media.slow_url("clip.mp4", chunk=4096, interval=0.25))
        proc = procs.procs["up"]
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # two key presses, not one signal twice in the same instant
        proc.send_signal(signal.SIGINT)
        assert _ended_within(proc, 10) < 2, procs.log("up")
        assert proc.returncode == 128 + signal.SIGINT, procs.log("up")
        assert "second SIGINT: stopping at once" in procs.log("up")


def test_spool_worker_reactors_and_api_stop_on_sigterm_within_10_s(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    with procs.kept_logs():
        worker = procs.worker("lifecycle-worker")
        reactors = procs.start("reactors", "reactors")
        procs.api()  # side by side with the two above, which start meanwhile
        api = procs.procs["api"]
        deadline = time.monotonic() + 60
        while not (
            "working (download queue" in procs.log("lifecycle-worker")
            and "spool reactors are running" in procs.log("reactors")
        ):
            assert worker.poll() is None and reactors.poll() is None, procs.logs()
            assert time.monotonic() < deadline, procs.logs()
            time.sleep(0.1)
        for proc in (api, worker, reactors):
            proc.send_signal(signal.SIGTERM)
        for proc in (api, worker, reactors):
            _ended_within(proc, 10)
        assert (api.returncode, worker.returncode, reactors.returncode) == (0, 0, 0), procs.logs()
