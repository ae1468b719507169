"""`spool up`, `spool api`, `spool reactors` and `spool worker`: the long-running processes.

Each stops on SIGINT or SIGTERM within `STOP_DEADLINE` seconds (running stages are interrupted
and recorded so), and at once on a second one. `spool up` is all of them in one process; the
others split it for several machines (see docs/operations.md, "Several machines").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Collection, Coroutine, Generator
from types import FrameType
from typing import Any, NoReturn

import msgspec
import uvicorn
from litestar import Litestar

from spool.adapters import process_groups
from spool.adapters.log_format import setup_logging
from spool.adapters.settings import Settings
from spool.adapters.timed_event_store import TimedEventStore
from spool.api.app import create_app
from spool.api.ws_limits import UVICORN_WS
from spool.assembly import NODE, REACTORS, assemble
from spool.embedded import embedded_servers
from spool.keys import ensure_first_key
from spool.runtime import Runtime, open_runtime

log = logging.getLogger("spool")


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: one signal stops every part of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


STOP_DEADLINE = 9.0
"""Seconds from SIGINT / SIGTERM to the end of the process, whatever is still running then."""

STOP_GRACE = 6.5
"""Seconds the parts of a process are given to stop by themselves (a node interrupting its
stages and recording so takes most of it) before they are cancelled."""

HTTP_GRACE = 3
"""Seconds uvicorn waits for open requests and websockets to finish once told to stop."""


def stop_on_signals(*, deadline: float = STOP_DEADLINE) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: how every long-running command is stopped.

    The first signal sets it and starts a watchdog that ends the process `deadline` seconds
    later, should anything hang on the way out; a second signal ends the process at once. Both
    kill the process groups of the children it started (FFmpeg) before exiting. Handlers are
    Python's own, not the loop's: they run even while the loop is blocked. They log nothing
    themselves: a handler interrupts whatever the main thread was doing, a write to stderr
    included, which a second write from inside would break.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            _exit_now(f"second {name}: stopping at once", 128 + signum)
        received.append(signum)

        def stopping() -> None:
            log.info("%s: stopping (send it again to stop at once)", name)
            stop.set()

        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to tell
            loop.call_soon_threadsafe(stopping)
        watchdog = threading.Timer(
            deadline, _exit_now, (f"not stopped {deadline:g} s after {name}: stopping now", 1)
        )
        watchdog.daemon = True
        watchdog.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def _exit_now(why: str, code: int) -> NoReturn:
    """End the process at once (no cleanup but the children's process groups).

    Says why straight to the stderr file descriptor: the logging handler's buffered stream
    may be in the middle of a write this call interrupted.
    """
    process_groups.kill_all()
    with contextlib.suppress(OSError):
        os.write(2, f"spool: {why}\n".encode())
    os._exit(code)


def listening_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts.

    A taken port is the commonest reason a start fails: found first, it costs nothing to
    undo and says so in one line (RuntimeError), instead of surfacing from uvicorn once the
    database, Redis and the node are up. Addressed as uvicorn would: IPv6 when `host` has a
    colon.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {_bind_failure(exc)}") from None
    return sock


def _bind_failure(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return (exc.strerror or str(exc)).lower()


async def _supervise(
    stop: asyncio.Event,
    parts: dict[str, Coroutine[Any, Any, Any]],
    *,
    grace: float = STOP_GRACE,
) -> None:
    """Run `parts` until `stop` (or until one of them ends), then give each `grace` seconds to
    finish before it is cancelled. A part that failed is raised (RuntimeError, one line) once
    all have stopped: the command then exits non-zero."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in parts.items()]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    stopper.cancel()
    failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception()]
    for t in failed:
        log.error("%s stopped: %s", t.get_name(), t.exception())
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        log.warning("%s did not stop within %g s: cancelled", t.get_name(), grace)
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    if failed:
        raise RuntimeError(f"{failed[0].get_name()} stopped: {failed[0].exception()}")


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


def parts(
    rt: Runtime, stop: asyncio.Event, names: Collection[str]
) -> dict[str, Coroutine[Any, Any, Any]]:
    """The named long-running parts over one process's runtime (spool/assembly.py), running
    until `stop`."""
    assert rt.redis is not None
    built = assemble(
        store=rt.store,
        redis=rt.redis,
        storage=rt.storage,
        settings=rt.settings,
        projections=rt.runner,
        parts=names,
    )
    return {name: part.run(stop) for name, part in built.items()}


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
    with listening_socket(settings.host, settings.port) as sock:
        async with open_runtime(settings, need_redis=True, embedded="own") as rt:
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
                    timeout_graceful_shutdown=HTTP_GRACE,
                    **UVICORN_WS,
                )
            )

            async def api() -> None:
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                server.should_exit = True
                await serving

            port = sock.getsockname()[1]  # the one bound: `--port 0` takes a free one
            log.info("spool is up: http://%s:%d (Swagger UI at /swagger)", settings.host, port)
            await _supervise(
                stop,
                {"api": api(), **parts(rt, stop, (*REACTORS, NODE))},
            )
            log.info("spool stopped")


async def run_reactors(settings: Settings) -> None:
    """Every reactor: projections, the pipeline and webhook reactors, the scheduler, the
    reconciler, viewer timeouts."""
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True, embedded="join") as rt:
        await rt.runner.catch_up()
        log.info("spool reactors are running")
        await _supervise(stop, parts(rt, stop, REACTORS))


async def worker(settings: Settings) -> None:
    """One worker node: its arq workers and its heartbeat."""
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True, embedded="join") as rt:
        await _supervise(stop, parts(rt, stop, (NODE,)))


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

    The parent finds the embedded servers of the `spool up` on its data dir (when no URL is
    given), migrates and creates the admin key once; the workers only serve. uvicorn's
    supervisor shares one listening socket among them, restarts a worker that dies, and passes
    SIGINT / SIGTERM on.
    """
    # Found before anything starts; uvicorn binds the port again itself once this is closed.
    listening_socket(settings.host, settings.port).close()
    servers = contextlib.ExitStack()
    try:
        urls = servers.enter_context(embedded_servers(settings, need_redis=True, role="join"))
        settings = msgspec.structs.replace(
            settings, database_url=urls.database_url, redis_url=urls.redis_url
        )
        asyncio.run(_prepare(settings))
        # The admin key exists now: the workers have no reason to look for it again.
        handed = msgspec.structs.replace(settings, api_key=None)
        os.environ[API_PROCESS_ENV] = msgspec.json.encode(
            ApiProcessConfig(msgspec.to_builtins(handed, enc_hook=str), processes)
        ).decode()
        log.info(
            "spool api: %d process(es) on http://%s:%d", processes, settings.host, settings.port
        )
        # uvicorn re-raises the signal it stopped on once it has shut down; SIGTERM's default
        # would then end the process before the `finally` below stops the embedded servers.
        # Raised as KeyboardInterrupt (SIGINT's way), uvicorn.run returns instead.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            timeout_graceful_shutdown=HTTP_GRACE,
            **UVICORN_WS,
        )
    finally:
        servers.close()


async def _prepare(settings: Settings) -> None:
    """Migrations, the admin key (or the first key) and the cluster's claim on Redis, once,
    before any API process starts."""
    async with open_runtime(settings, need_redis=True) as rt:
        await first_key(rt, settings)
