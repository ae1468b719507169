"""`spool up`: the API, the projection runner and (later) the worker and reactors in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

from adapters.settings import Settings
from api.app import create_app
from spool.runtime import open_runtime

log = logging.getLogger("spool")


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: `spool up` stops every part on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def up(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop everything it started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, need_redis=True) as rt:
        await rt.runner.catch_up()
        app = create_app(pool=rt.pool, store=rt.store, settings=settings)
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level="info",
                lifespan="on",
                access_log=False,
            )
        )
        tasks = [
            asyncio.create_task(server.serve(), name="api"),
            asyncio.create_task(rt.runner.run(stop), name="projections"),
        ]
        log.info("spool is up: http://%s:%d (Swagger UI at /swagger)", settings.host, settings.port)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        server.should_exit = True
        for t in done:
            if t is not stopper and t.exception() is not None:
                log.error("%s stopped: %s", t.get_name(), t.exception())
        await asyncio.wait(tasks, timeout=10)
        log.info("spool stopped")
