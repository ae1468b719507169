"""`spool up`'s embedded PostgreSQL and Redis: found again after a crash, stopped by the next
clean stop, one `spool up` per data dir, and the other `spool` processes of the machine joining
them through the data dir (spool/embedded.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis

from spool.embedded import DataDirInUse, DataDirLock, EmbeddedRedis, free_port, pid_alive
from tests.fixtures.processes import REPO_ROOT, SpoolProcesses, child_env, wait_http

KEY = "sk_embedded_servers_test_key_0123456789"


def processes_of(data_dir: Path) -> list[str]:
    """Every live process whose command line or working directory is under `data_dir`."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or ())
        if str(data_dir) in cmdline or (info["cwd"] or "").startswith(str(data_dir)):
            found.append(f"{info['pid']}: {cmdline} (in {info['cwd']})")
    return found


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def redis_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "redis" / "server.json").read_text())["pid"])


def task_ran_on(base: str, task_id: str, seconds: float = 60) -> dict[str, object]:
    """The task once it has finished, one way or another."""
    deadline = time.monotonic() + seconds
    while True:
        got = httpx.get(f"{base}/api/v1/tasks/{task_id}", headers={"x-api-key": KEY})
        data: dict[str, object] = got.json()["data"]
        if data["status"] in ("success", "failed", "timeout", "cancelled"):
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


def test_a_killed_spool_up_is_recovered_and_its_servers_stop_with_the_next_ctrl_c(
    tmp_path: Path,
) -> None:
    """One scenario (each embedded PostgreSQL start costs seconds): `spool up` on embedded
    defaults; a second one refused; `spool db url` and `db shell`; a worker (and `spool api`)
    beside it joining its Redis and taking a task; SIGKILL; a restart adopting both servers;
    Ctrl-C leaving nothing running."""
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = SpoolProcesses(tmp_path, {"SPOOL_API_KEY": KEY})
    up_flags = ("up", "--port", str(port), "--data-dir", str(data_dir), "--node-id", "up-node")
    with procs.kept_logs():
        try:
            first = procs.start("up-1", *up_flags)
            wait_http(f"{base}/health", 120, first)

            began = time.monotonic()
            second = procs.run(
                "up", "--port", str(free_port()), "--data-dir", str(data_dir), seconds=10
            )
            assert second.returncode != 0
            assert time.monotonic() - began < 10
            (line,) = [ln for ln in second.stderr.splitlines() if "in use" in ln]
            assert f"data dir {data_dir} is in use by spool up (pid {first.pid})" in line

            url = procs.run("db", "url", "--data-dir", str(data_dir))
            assert url.returncode == 0, url.stderr

            async def select_one() -> int:
                conn = await asyncpg.connect(url.stdout.strip())
                try:
                    return int(await conn.fetchval("SELECT count(*) FROM cluster_identity"))
                finally:
                    await conn.close()

            assert asyncio.run(select_one()) == 1
            shell = procs.run(
                "db", "shell", "--data-dir", str(data_dir), "-tA", "-c", "SELECT 6 * 7"
            )
            assert (shell.returncode, shell.stdout.strip()) == (0, "42"), shell.stderr

            procs.start(
                "beside", "worker", "--data-dir", str(data_dir), "--node-id", "beside",
                "--tag", "beside",
            )  # fmt: skip
            submitted = httpx.post(
                f"{base}/api/v1/tasks",
                json={
                    "task_type": "echo",
                    "payload": {"said": "hello"},
                    "requirements": {"required_tags": ["beside"]},
                },
                headers={"x-api-key": KEY},
            )
            assert submitted.status_code == 201, submitted.text
            done = task_ran_on(base, submitted.json()["data"]["task_id"])
            assert (done["status"], done["device_id"]) == ("success", "beside"), procs.logs()
            # `spool api` beside it serves the same cluster: the task is there.
            api = procs.api("--data-dir", str(data_dir))
            seen = httpx.get(f"{api}/api/v1/tasks/{done['task_id']}", headers={"x-api-key": KEY})
            assert seen.json()["data"]["status"] == "success"
            procs.stop("api")
            procs.stop("beside")
            assert procs.procs["beside"].returncode == 0, procs.log("beside")
            # The worker joined: the servers it used are still up and still the same.
            pg, redis = postmaster_pid(data_dir), redis_pid(data_dir)
            assert pid_alive(pg) and pid_alive(redis)

            procs.kill("up-1")
            assert pid_alive(pg) and pid_alive(redis)  # what a crash leaves

            restarted = procs.start("up-2", *up_flags)
            wait_http(f"{base}/health", 120, restarted)
            assert (postmaster_pid(data_dir), redis_pid(data_dir)) == (pg, redis)
            assert f"before this one (pid {first.pid}) did not stop cleanly" in procs.log("up-2")

            restarted.send_signal(signal.SIGINT)
            assert restarted.wait(60) == 0, procs.log("up-2")
            assert processes_of(data_dir) == []
            assert not pid_alive(pg) and not pid_alive(redis)
            assert not (data_dir / "redis" / "server.json").exists()
        finally:
            procs.stop_all()


def test_a_worker_with_no_urls_and_no_spool_up_on_its_data_dir_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    procs = SpoolProcesses(tmp_path, {})
    began = time.monotonic()
    done = procs.run("worker", "--data-dir", str(tmp_path / "data"), seconds=30)
    assert done.returncode != 0
    assert time.monotonic() - began < 10
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: no spool up is running on data dir {tmp_path / 'data'}: start `spool up` "
        "there first, or give --database-url and --redis-url"
    )
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


def test_spool_db_url_says_clearly_when_the_embedded_server_is_not_running(
    tmp_path: Path,
) -> None:
    procs = SpoolProcesses(tmp_path, {})
    done = procs.run("db", "url", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 1
    assert "embedded PostgreSQL of data dir" in done.stderr and "is not running" in done.stderr
    given = procs.run("db", "url", SPOOL_DATABASE_URL="postgresql://spool@db.internal/spool")
    assert given.stdout.strip() == "postgresql://spool@db.internal/spool"


def crashed_holder(script: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """A Python child that runs `script` on `data_dir`, says `ready` and waits to be killed."""
    child = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path; from spool.embedded import *; "
            f"d = Path(sys.argv[1]); {script}; print('ready', flush=True); time.sleep(60)",
            str(data_dir),
        ],
        cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_a_data_dir_lock_names_its_live_owner_and_is_taken_over_from_a_dead_one(
    tmp_path: Path,
) -> None:
    holder = crashed_holder("DataDirLock(d).acquire()", tmp_path)
    try:
        with pytest.raises(DataDirInUse, match=rf"in use by spool up \(pid {holder.pid}\)"):
            DataDirLock(tmp_path).acquire(wait=0.1)
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock(tmp_path)
    assert lock.acquire() == holder.pid  # the kernel let go; the pid says who crashed
    lock.release()
    again = DataDirLock(tmp_path)
    assert again.acquire() is None  # a clean release leaves no crash behind
    again.release()


def test_an_embedded_redis_left_by_a_crash_is_adopted_and_a_dead_one_replaced(
    tmp_path: Path,
) -> None:
    owner = crashed_holder("EmbeddedRedis(d).start()", tmp_path)
    owner.kill()
    owner.wait()
    pid = redis_pid(tmp_path)
    left = psutil.Process(pid)
    adopter = EmbeddedRedis(tmp_path)
    url = adopter.start()
    try:
        # The next owner finds the same server; it answers.
        assert redis_pid(tmp_path) == pid
        assert redis.Redis.from_url(url).ping()
        left.kill()
        left.wait(5)
        replacement = EmbeddedRedis(tmp_path)
        # A fresh server on the recorded port (free again): joined clients find it again.
        assert replacement.start() == url
        assert redis_pid(tmp_path) != pid
        replacement.stop()
    finally:
        adopter.stop()
    assert processes_of(tmp_path) == []
    assert not (tmp_path / "redis" / "server.json").exists()
