"""Spool as a user runs it, for benchmarks: a database of the bench's own, an embedded Redis,
`spool reactors` and `spool api --processes N` as child processes; all stopped and dropped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from adapters.database import create_database, drop_database, migrate
from bench.harness import REPO_ROOT, free_port, stop_process
from spool.embedded import EmbeddedRedis
from tests.fixtures.processes import wait_http


@dataclass
class Cluster:
    database_url: str
    redis_url: str
    root: Path
    key: str
    """An admin API key."""
    api_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spool(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """`spool <args>` against this cluster's database and Redis, output into `<name>.log`."""
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spool",
                *args,
                "--database-url",
                self.database_url,
                "--redis-url",
                self.redis_url,
                "--data-dir",
                str(self.root / "data"),
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(proc)
        return proc

    def start_api(self, processes: int) -> subprocess.Popen[bytes]:
        """`spool api --processes N` on a free port; returns once it answers."""
        port = free_port()
        proc = self.spool(
            f"api-{port}", "api", "--processes", str(processes), "--port", str(port),
            "--api-key", self.key,
        )  # fmt: skip
        self.api_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.api_url}/health", 120)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)
        if proc in self.processes:
            self.processes.remove(proc)


@contextlib.asynccontextmanager
async def spool_cluster(server_url: str, label: str) -> AsyncIterator[Cluster]:
    """A migrated database `spool_bench_<hex>_<label>` and a Redis; `spool` children on demand."""
    name = f"spool_bench_{secrets.token_hex(4)}_{label}"
    root = Path(tempfile.mkdtemp(prefix=f"spool-bench-{label}-"))
    redis = EmbeddedRedis(root)
    url = await create_database(server_url, name)
    cluster: Cluster | None = None
    try:
        await migrate(url)
        cluster = Cluster(url, redis.start(), root, "sk_" + secrets.token_urlsafe(24))
        yield cluster
    finally:
        if cluster is not None:
            for proc in reversed(cluster.processes):
                await asyncio.to_thread(stop_process, proc)
        redis.stop()
        await drop_database(server_url, name)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def kept_logs(cluster: Cluster) -> Iterator[None]:
    """On an error, print the tail of every child's log before the cluster is removed."""
    try:
        yield
    except BaseException:
        for log in sorted(cluster.root.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
