"""The suite's guard against processes a test leaves on its Redis (tests/conftest.py
`unclaimed_redis`): it looks only after a test that started a process, and then finds it,
however the process was started."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests.fixtures.processes import (
    kill_processes_on_redis,
    processes_on_redis,
    spawned_since_last_check,
)

_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_test_that_starts_nothing_is_not_searched() -> None:
    spawned_since_last_check()
    assert not spawned_since_last_check()


def test_a_process_left_on_the_tests_redis_is_seen_and_killed(redis_url: str) -> None:
    spawned_since_last_check()
    left = subprocess.Popen(_SLEEPER, env={"SPOOL_REDIS_URL": redis_url})
    try:
        assert spawned_since_last_check()
        assert [p.pid for p in processes_on_redis(redis_url)] == [left.pid]
        assert kill_processes_on_redis(redis_url) == [" ".join(_SLEEPER)]
        assert processes_on_redis(redis_url) == []
    finally:
        left.kill()
        left.wait(10)
    spawned_since_last_check()  # this test's own process is gone: nothing for the guard


async def test_a_process_started_by_asyncio_counts_as_started(redis_url: str) -> None:
    spawned_since_last_check()
    left = await asyncio.create_subprocess_exec(*_SLEEPER, env={"SPOOL_REDIS_URL": redis_url})
    try:
        assert spawned_since_last_check()
        assert [p.pid for p in processes_on_redis(redis_url)] == [left.pid]
    finally:
        left.kill()
        await left.wait()
    spawned_since_last_check()
