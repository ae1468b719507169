"""Benchmark children of our own, the ready line they print; statistics; py-spy profiles.

They start and stop through `tests.fixtures.processes`, as every child does. Each child here is
`python -m bench.harness <what> ...`; it prints one JSON line saying where it listens once it
is ready, then serves until SIGTERM / SIGINT:

* `fixtures --root DIR`: a 2 s clip made by FFmpeg (`tests.fixtures.media.make_clip`) served by
  the loopback `MediaServer`, and moto's `ThreadedMotoServer` (a real S3 server) on loopback
  (`fixtures` starts it and hands back where they are, `Fixtures`);
* `api --database-url URL --port N --data-dir DIR`: the real Spool API (`api.app.create_app`)
  under one uvicorn server in one process, wired as `spool up` wires it;
* `constant --port N`: a minimal Litestar app whose `GET /constant` returns the JSON shape of
  `GET /dashboard/cluster` from a constant, under the same uvicorn configuration.

The fixtures live in a process of their own so that neither side of a comparison shares a GIL
with the S3 server or the media server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, get

from tests.fixtures.processes import start_module, stop_processes
from tests.fixtures.s3 import S3Server

# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


# --- processes --------------------------------------------------------------------------------


def read_ready_line(
    proc: subprocess.Popen[bytes], seconds: float = 60.0, log: Path | None = None
) -> dict[str, Any]:
    """The JSON line a `bench.harness` child prints once it serves."""
    assert proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(seconds)
    if not box or not box[0]:
        stop_processes(proc)
        raise RuntimeError(
            f"{proc.args!s} did not report ready within {seconds:g} s"
            + (f"; its log:\n{log.read_text()[-3000:]}" if log is not None and log.exists() else "")
        )
    answer: dict[str, Any] = json.loads(box[0])
    return answer


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    seconds: float,
    what: str,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    every: float = 0.2,
) -> Any:
    """Call `check` every `every` seconds until it answers something truthy; that answer.

    Fails after `seconds`, or as soon as one of `procs` (the workers doing the work) has ended.
    """
    deadline = time.monotonic() + seconds
    while True:
        answer = await check()
        if answer:
            return answer
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: a worker exited with {dead[0].returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {seconds:g} s")
        await asyncio.sleep(every)


class OtherTransactions:
    """The write transactions seen open in other databases of the server, sampled every
    `every` seconds while the block runs.

    A reader of the log reads only below the oldest transaction still open on the server
    (adapters/event_store.py, `pg_snapshot_xmin`), and transaction ids are server-wide: on a
    shared server, another database's long transaction holds every projection and reactor of
    the run back for as long. A bench reports what it saw, and which of its events such a
    transaction held (`held`), so that such a stall is not taken for Spool's own.
    """

    def __init__(self, pool: Any, every: float = 0.1) -> None:
        self.pool = pool
        self.every = every
        self.seen: dict[tuple[int, float], tuple[str, float, float]] = {}
        """(pid, start) -> (database, start, last seen open), epoch seconds."""
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            rows = await self.pool.fetch(
                "SELECT pid, datname, extract(epoch FROM xact_start)::float8 AS start, "
                "extract(epoch FROM clock_timestamp())::float8 AS now FROM pg_stat_activity "
                "WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()"
            )
            for r in rows:
                self.seen[(r["pid"], r["start"])] = (r["datname"] or "", r["start"], r["now"])
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> OtherTransactions:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def held(self, at: float, *, longer: float = 0.02) -> bool:
        """Whether such a transaction began before `at` (epoch seconds) and was still seen open
        more than `longer` seconds after it: an event appended at `at` waited for it (at least
        that long) before any reader could see it."""
        return any(began < at and seen > at + longer for _, began, seen in self.seen.values())

    def describe(self) -> str:
        if not self.seen:
            return "no write transaction seen open in another database of the server"
        where, began, seen = max(self.seen.values(), key=lambda t: t[2] - t[1])
        return (
            f"{len(self.seen)} write transaction(s) seen open in other databases of the "
            f"server, the longest {seen - began:.1f} s (`{where}`)"
        )


@dataclass(frozen=True)
class Fixtures:
    """Where the fixtures child serves the clip and S3, and its pid (for CPU accounting)."""

    clip_url: str
    clip_bytes: int
    s3: S3Server
    pid: int

    def bucket(self, prefix: str) -> str:
        """A new empty bucket named after `prefix`."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.s3.client().create_bucket(Bucket=name)
        return name

    def storage_url(self, bucket: str) -> str:
        """A `SPOOL_STORAGE_URL` for `bucket`; the credentials stay in the environment."""
        return f"s3://{bucket}/media?endpoint={self.s3.endpoint_url}&region={self.s3.region}"


@contextlib.contextmanager
def fixtures(tmp: Path) -> Iterator[Fixtures]:
    """The fixtures child (the clip over loopback HTTP and moto's S3 server) until the block
    ends. moto accepts any key pair: one is set in this process's environment if none is, for
    the children (S3 clients read it there) and for `Fixtures.s3`."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret-key")
    proc = start_module(
        "bench.harness",
        "fixtures",
        "--root",
        str(tmp / "media"),
        pipe_stdout=True,
        log=tmp / "fixtures.log",
    )
    try:
        ready = read_ready_line(proc, 120, tmp / "fixtures.log")
        yield Fixtures(
            clip_url=ready["clip_url"],
            clip_bytes=ready["clip_bytes"],
            s3=S3Server(
                endpoint_url=ready["s3_endpoint"],
                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            ),
            pid=proc.pid,
        )
    finally:
        stop_processes(proc)


def profiler(pid: int, out: Path, *, rate: int = 97) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of `pid` into `out` (collapsed stacks), or None without py-spy."""
    exe = _which("py-spy")
    if exe is None:
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    """py-spy writes its file on SIGINT."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def top_frames(collapsed: Path, n: int = 25, *, own: bool = False) -> list[tuple[float, str]]:
    """The frames that appear in the most samples of a py-spy raw profile (share, frame).

    `own=False` counts a frame wherever it is on the stack (inclusive); `own=True` only when it
    is the innermost frame (self time).
    """
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        chosen = [frames[-1]] if own else list(dict.fromkeys(frames))
        for frame in chosen:
            counts[frame] = counts.get(frame, 0) + samples
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(c / total if total else 0.0, f) for f, c in ranked]


def _which(name: str) -> str | None:
    for folder in [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# --- the children -----------------------------------------------------------------------------


def _until_signalled() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _ready(**where: Any) -> None:
    sys.stdout.write(json.dumps(where) + "\n")
    sys.stdout.flush()


def serve_fixtures(root: Path, seconds: float) -> None:
    """The clip over loopback HTTP and an S3 server, until signalled."""
    from moto.server import ThreadedMotoServer

    from tests.fixtures.media import MediaServer, make_clip

    clip = make_clip(root / "clip.mp4", seconds)
    media = MediaServer(root).start()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    try:
        _ready(
            clip_url=media.url("clip.mp4"),
            clip_bytes=clip.stat().st_size,
            s3_endpoint=f"http://{host}:{port}",
        )
        _until_signalled()
    finally:
        s3.stop()
        media.stop()


def _uvicorn_server(app: Any, port: int) -> Any:
    import uvicorn

    # As `spool up` runs it: the default asyncio loop (asyncio.run), uvicorn's default HTTP
    # implementation, no access log. Both apps under test get exactly this.
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            log_config=None,
        )
    )


async def serve_api(database_url: str, port: int, data_dir: Path) -> None:
    """The real Spool API over `database_url`, served by uvicorn until signalled."""
    from spool.adapters.database import create_pool
    from spool.adapters.event_store import EventStore
    from spool.adapters.settings import Settings
    from spool.adapters.storage import LocalStorage
    from spool.api.app import create_app

    pool = await create_pool(database_url, max_size=20)  # as spool.runtime opens it
    storage = LocalStorage(data_dir / "storage")
    try:
        app = create_app(
            pool=pool,
            store=EventStore(pool),
            settings=Settings(database_url=database_url, data_dir=data_dir),
            storage=storage,
        )
        server = _uvicorn_server(app, port)
        _ready(url=f"http://127.0.0.1:{port}")
        await server.serve()
    finally:
        await storage.close()
        await pool.close()


class ClusterStats(msgspec.Struct):
    """The shape of `GET /dashboard/cluster`'s answer."""

    total_downloading: int
    total_muxing: int
    total_uploading: int


@get("/constant")
async def constant() -> ClusterStats:
    return ClusterStats(0, 0, 0)


async def serve_constant(port: int) -> None:
    """`GET /constant`: the dashboard's JSON shape from a constant, nothing else."""
    server = _uvicorn_server(Litestar(route_handlers=[constant], debug=False), port)
    _ready(url=f"http://127.0.0.1:{port}")
    await server.serve()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    fx = sub.add_parser("fixtures", help="clip over loopback HTTP + moto S3 server")
    fx.add_argument("--root", type=Path, required=True)
    fx.add_argument("--seconds", type=float, default=2.0)
    api = sub.add_parser("api", help="the real Spool API under uvicorn")
    api.add_argument("--database-url", required=True)
    api.add_argument("--port", type=int, required=True)
    api.add_argument("--data-dir", type=Path, required=True)
    const = sub.add_parser("constant", help="a Litestar app returning a constant")
    const.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.what == "fixtures":
        serve_fixtures(args.root, args.seconds)
    elif args.what == "api":
        asyncio.run(serve_api(args.database_url, args.port, args.data_dir))
    else:
        asyncio.run(serve_constant(args.port))


if __name__ == "__main__":
    main()
