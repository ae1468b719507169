"""`spool up`, `spool api`, `spool reactors` and `spool worker`: the long-running processes.

Each stops on SIGINT or SIGTERM. `spool up` is all of them in one process; the others split it
for several machines (see the README, "Several machines").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Generator
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar

from adapters.log_format import setup_logging
from adapters.settings import Settings
from adapters.timed_event_store import TimedEventStore
from api.app import create_app
from api.ws_limits import UVICORN_WS
from reactors.node import Node
from reactors.pipeline import PipelineReactor
from reactors.projection import ProjectionRunner
from reactors.reconciler import Reconciler
from reactors.scheduler import Scheduler
from reactors.viewer_timeouts import ViewerTimeouts
from reactors.webhooks import WebhookReactor
from spool.embedded import EmbeddedPostgres, EmbeddedRedis
from spool.keys import ensure_first_key
from spool.runtime import Runtime, open_runtime

log = logging.getLogger("spool")


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: one signal stops every part of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: how every long-running command is stopped."""
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


def api_app(rt: Runtime, settings: Settings) -> Litestar:
    """The API over one process's runtime."""
    return create_app(
        pool=rt.pool,
        # The API's appends are timed for /metrics; the store is otherwise the same.
        store=TimedEventStore(rt.pool),
        settings=settings,
        storage=rt.storage,
        redis=rt.redis,
        # Which events each checkpoint follows, for /metrics' projection lag.
        projection_types={p.name: p.event_types for p in rt.runner.projections},
    )


def reactors(rt: Runtime, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, Any]]:
    """Every log follower and periodic pass; each is safe to run in several processes at once.

    Projections, the pipeline and webhooks: a row lock on their checkpoint (one runner applies a
    batch, the others wait and find it applied). Scheduler and viewer timeouts: a transaction
    advisory lock per pass. Reconciler: optimistic concurrency on the job stream, and arq ids
    that are the unit's own (a second enqueue of the same unit is a no-op).
    """
    assert rt.redis is not None
    pipeline = ProjectionRunner(rt.store, [PipelineReactor(rt.redis), WebhookReactor(rt.redis)])
    return {
        "projections": rt.runner.run(stop),
        "pipeline": pipeline.run(stop),
        "scheduler": Scheduler(rt.store, rt.redis).run(stop),
        "reconciler": Reconciler(rt.store, rt.redis, rt.settings).run(stop),
        "viewer-timeouts": ViewerTimeouts(rt.store, rt.settings).run(stop),
    }


async def first_key(rt: Runtime, settings: Settings) -> None:
    """On a database with no key at all: make one admin key and print it once, on stdout.

    Not in the log: a log line is kept and shipped; the key exists only as a digest.
    """
    created = await ensure_first_key(rt.store)
    if created is None:
        return
    await rt.runner.wait_until("api_keys", created.at)
    base = f"http://{settings.host}:{settings.port}"
    print(
        "\nSpool made its first API key, an admin key. It is shown only this once (only its\n"
        "digest is stored); keep it somewhere safe:\n\n"
        f"    {created.key}\n\n"
        "Send it as `x-api-key: <key>` or `Authorization: Bearer <key>`, for example:\n"
        f"    curl -H 'x-api-key: {created.key}' {base}/user/keys\n"
        "Make keys of narrower scope for people and scripts with\n"
        "    spool keys create --name NAME --scope jobs    (or POST /user/keys)\n",
        flush=True,
    )
    log.info("made the first admin key (printed on stdout, not logged)")


async def up(settings: Settings) -> None:
    """API, projections, the pipeline reactor, the task scheduler, the reconciler, one node."""
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        assert rt.redis is not None
        await rt.runner.catch_up()
        await first_key(rt, settings)
        app = api_app(rt, settings)
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level="info",
                lifespan="on",
                access_log=False,
                log_config=None,
                **UVICORN_WS,
            )
        )

        async def api() -> None:
            serving = asyncio.create_task(server.serve())
            await stop.wait()
            server.should_exit = True
            await serving

        log.info("spool is up: http://%s:%d (Swagger UI at /swagger)", settings.host, settings.port)
        await _supervise(
            stop,
            {"api": api(), **reactors(rt, stop), "node": node_for(rt).run(stop)},
        )
        log.info("spool stopped")


async def run_reactors(settings: Settings) -> None:
    """Projections, the pipeline and webhook reactors, the scheduler, the reconciler."""
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        await rt.runner.catch_up()
        log.info("spool reactors are running")
        await _supervise(stop, reactors(rt, stop))


async def worker(settings: Settings) -> None:
    """One worker node: its arq workers and its heartbeat."""
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True) as rt:
        await _supervise(stop, {"node": node_for(rt).run(stop)})


API_PROCESS_ENV = "SPOOL_API_PROCESS"
"""How `spool api` hands its resolved settings to the uvicorn worker processes it starts."""


class ApiProcessConfig(msgspec.Struct):
    settings: dict[str, Any]
    processes: int


class ApiProcess:
    """The ASGI app of one API process: its own pool and Redis, opened at lifespan start.

    uvicorn's worker processes each import the app by name and start it in their own event
    loop, where the connections must be made: so the Litestar app is built inside the lifespan.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Litestar | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            async with open_runtime(self.settings, need_redis=True, run_migrations=False) as rt:
                self.app = api_app(rt, self.settings)
                await self.app(scope, receive, send)
            return
        assert self.app is not None, "uvicorn runs the lifespan before serving"
        await self.app(scope, receive, send)


def api_process() -> ApiProcess:
    """uvicorn's app factory in each `spool api` process (settings from the parent)."""
    setup_logging(logging.INFO)
    config = msgspec.json.decode(os.environ[API_PROCESS_ENV], type=ApiProcessConfig)
    settings = Settings.from_env({}, **config.settings)
    if config.processes > 1:
        # Each process holds its own live connections: its viewer streams say which process.
        settings = msgspec.structs.replace(settings, node_id=f"{settings.node_id}-{os.getpid()}")
    return ApiProcess(settings)


def api(settings: Settings, processes: int) -> None:
    """The API alone in `processes` uvicorn worker processes on one port; no reactors.

    The parent starts what is embedded, migrates and creates the admin key once; the workers
    only serve. uvicorn's supervisor shares one listening socket among them, restarts a worker
    that dies, and passes SIGINT / SIGTERM on.
    """
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        if settings.database_url is None:
            embedded.append(pg := EmbeddedPostgres(settings.data_dir))
            settings = msgspec.structs.replace(settings, database_url=pg.start())
        if settings.redis_url is None:
            embedded.append(redis := EmbeddedRedis(settings.data_dir))
            settings = msgspec.structs.replace(settings, redis_url=redis.start())
        asyncio.run(_prepare(settings))
        # The admin key exists now: the workers have no reason to look for it again.
        handed = msgspec.structs.replace(settings, api_key=None)
        os.environ[API_PROCESS_ENV] = msgspec.json.encode(
            ApiProcessConfig(msgspec.to_builtins(handed, enc_hook=str), processes)
        ).decode()
        log.info(
            "spool api: %d process(es) on http://%s:%d", processes, settings.host, settings.port
        )
        uvicorn.run(
            "spool.serve:api_process",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=processes,
            log_level="info",
            lifespan="on",
            access_log=False,
            log_config=None,
            **UVICORN_WS,
        )
    finally:
        for server in reversed(embedded):
            server.stop()


async def _prepare(settings: Settings) -> None:
    """Migrations, the admin key (or the first key) and the cluster's claim on Redis, once,
    before any API process starts."""
    async with open_runtime(settings, need_redis=True) as rt:
        await first_key(rt, settings)
