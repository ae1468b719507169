"""`spool up`, `api`, `reactors` and `worker`: long-running processes, stopped by SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Generator
from typing import Any

import uvicorn

from adapters.settings import Settings
from adapters.timed_event_store import TimedEventStore
from api.app import create_app
from reactors.node import Node
from reactors.pipeline import PipelineReactor
from reactors.projection import ProjectionRunner
from reactors.reconciler import Reconciler
from reactors.scheduler import Scheduler
from reactors.viewer_timeouts import ViewerTimeouts
from reactors.webhooks import WebhookReactor
from spool.runtime import Runtime, open_runtime

log = logging.getLogger("spool")


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: one signal stops every part of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def node_for(rt: Runtime) -> Node:
    assert rt.redis is not None
    return Node(store=rt.store, redis=rt.redis, storage=rt.storage, settings=rt.settings)


async def _supervise(stop: asyncio.Event, parts: dict[str, Coroutine[Any, Any, Any]]) -> None:
    """Run `parts` until `stop` (or until one of them ends), then let each finish."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in parts.items()]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for t in done:
        if t is not stopper and not t.cancelled() and t.exception() is not None:
            log.error("%s stopped: %s", t.get_name(), t.exception())
    _, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()


def _api_server(rt: Runtime, settings: Settings) -> _Server:
    assert rt.redis is not None
    app = create_app(
        pool=rt.pool,
        # The API's appends are timed for /metrics; the store is otherwise the same.
        store=TimedEventStore(rt.pool),
        settings=settings,
        storage=rt.storage,
        redis=rt.redis,
        # Which events each checkpoint follows, for /metrics' projection lag.
        projection_types={p.name: p.event_types for p in rt.runner.projections},
    )
    return _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            lifespan="on",
            access_log=False,
            log_config=None,
        )
    )


async def _serve_api(server: _Server, stop: asyncio.Event) -> None:
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving


def _reactors(
    rt: Runtime, settings: Settings, stop: asyncio.Event
) -> dict[str, Coroutine[Any, Any, Any]]:
    """The log followers and timers: any number of processes may run them at once.

    Projections and the pipeline lock their checkpoint row, the pipeline's enqueues are
    idempotent by unit id, the scheduler and viewer timeouts take advisory locks, and the
    reconciler acts only on what two of its passes agree on, at the job's version.
    """
    assert rt.redis is not None
    pipeline = ProjectionRunner(rt.store, [PipelineReactor(rt.redis), WebhookReactor(rt.redis)])
    return {
        "projections": rt.runner.run(stop),
        "pipeline": pipeline.run(stop),
        "scheduler": Scheduler(rt.store, rt.redis).run(stop),
        "reconciler": Reconciler(rt.store, rt.redis, settings).run(stop),
        "viewer-timeouts": ViewerTimeouts(rt.store, settings).run(stop),
    }


async def up(settings: Settings) -> None:
    """API, projections, the pipeline reactor, the task scheduler, the reconciler, one node."""
    stop = _stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        await rt.runner.catch_up()
        server = _api_server(rt, settings)
        log.info("spool is up: http://%s:%d (Swagger UI at /swagger)", settings.host, settings.port)
        await _supervise(
            stop,
            {
                "api": _serve_api(server, stop),
                **_reactors(rt, settings, stop),
                "node": node_for(rt).run(stop),
            },
        )
        log.info("spool stopped")


async def api(settings: Settings) -> None:
    """The API alone (no reactors, no node): run as many as the load needs."""
    stop = _stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        server = _api_server(rt, settings)
        log.info("spool api on http://%s:%d", settings.host, settings.port)
        await _supervise(stop, {"api": _serve_api(server, stop)})


async def reactors(settings: Settings) -> None:
    """Projections, the pipeline, the scheduler, the reconciler and viewer timeouts, no API."""
    stop = _stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        await rt.runner.catch_up()  # as `up` does: nothing acts on a stale view of the cluster
        log.info("spool reactors running")
        await _supervise(stop, _reactors(rt, settings, stop))


async def worker(settings: Settings) -> None:
    """One worker node: its arq workers and its heartbeat."""
    stop = _stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        await _supervise(stop, {"node": node_for(rt).run(stop)})
