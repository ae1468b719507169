"""Start and stop that never hang: the real `spool` processes, their ports, databases and signals.

A start that cannot bind its port or reach its database ends within 10 s with one line saying
why, leaving nothing running. SIGINT or SIGTERM stops a process within 10 s, interrupting the
stage it runs; the interruption is recorded (not as a failure) and the work resumes on the
next start. A second SIGINT stops at once.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from spool.embedded import free_port
from tests.fixtures.media import MediaServer
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


def test_spool_up_on_a_taken_port_exits_within_10_s_saying_so_and_starts_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        procs = SpoolProcesses(tmp_path, {})
        # Embedded defaults: were anything started before the port is tried, it would be
        # PostgreSQL and a redis-server under the data dir.
        proc = procs.start("up", "up", "--port", str(port), "--data-dir", str(data_dir))
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


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_during_a_throttled_download_ends_within_10_s_and_the_job_completes_after_restart(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    dripping_media: MediaServer,
    stop_signal: signal.Signals,
) -> None:
    """Ctrl-C (or SIGTERM) cuts the download off; the attempt is recorded as interrupted by
    the shutdown, spends none of the job's retries, leaves no partial file, and the next start
    downloads again and completes the job."""
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    port = free_port()
    with procs.kept_logs():
        base = _start_up(procs, port)
        # A few KiB every quarter second: the 2 s clip would take about half a minute.
        url = dripping_media.slow_url("clip.mp4", chunk=4096, interval=0.25)
        job_id = _downloading(base, url)
        proc = procs.procs["up"]
        proc.send_signal(stop_signal)
        _ended_within(proc, 10)
        first_log = procs.log("up", tail=100_000)
        assert proc.returncode == 0, first_log
        assert "Traceback" not in first_log and "rename" not in first_log
        assert not any((tmp_path / "data" / "work" / job_id).rglob("*.*"))

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


def test_spool_worker_and_spool_reactors_stop_on_sigterm_within_10_s(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    procs = _cluster(tmp_path, fresh_database_url, redis_url)
    with procs.kept_logs():
        worker = procs.worker("lifecycle-worker")
        reactors = procs.start("reactors", "reactors")
        deadline = time.monotonic() + 60
        while not (
            "working (download queue" in procs.log("lifecycle-worker")
            and "spool reactors are running" in procs.log("reactors")
        ):
            assert worker.poll() is None and reactors.poll() is None, procs.logs()
            assert time.monotonic() < deadline, procs.logs()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        reactors.send_signal(signal.SIGTERM)
        _ended_within(worker, 10)
        _ended_within(reactors, 10)
        assert (worker.returncode, reactors.returncode) == (0, 0), procs.logs()
