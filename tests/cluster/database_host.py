"""The database host of a multi-host test: the root namespace, serving PostgreSQL, Redis, S3
(moto) and the media server on its address on the bridge.

PostgreSQL and Redis are the machine's own (or the embedded ones a bench starts), which
listen on loopback only. `socat` forwards the bridge address's port to each: the simplest
way that stays real. The other hosts speak the PostgreSQL and Redis protocols over their link
to a TCP port on the database host, as they would to a database machine; what answers is the
same server the suite already makes its databases on (a fresh database of the test's own, a
Redis database of the test process's own), so nothing about them is set up a second time. The
alternative, servers of the test's own bound to the bridge address, would cost an `initdb`,
a pg_hba for 198.18.0.0/15 and a migration per run for no difference the nodes can see.

moto and the media server run in this process (tests/fixtures/s3.py, tests/fixtures/media.py),
bound to the bridge address alone.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from moto.server import ThreadedMotoServer

from tests.fixtures.media import MediaServer
from tests.fixtures.processes import kill_group
from tests.fixtures.s3 import S3Server

if TYPE_CHECKING:
    from tests.cluster.slow_link import Relay


@dataclass(frozen=True)
class DatabaseHost:
    """What the other hosts are given to reach the database host."""

    address: str
    database_url: str
    redis_url: str
    s3: S3Server
    bucket: str
    media: MediaServer
    relay: Relay | None = None
    """What forwards PostgreSQL and Redis in a `slowable` cluster (tests/cluster/multihost.py),
    in place of socat."""

    @property
    def storage_url(self) -> str:
        """`SPOOL_STORAGE_URL` of the bucket, `media` prefix (credentials go in the
        environment, `storage_env`)."""
        return f"s3://{self.bucket}/media?endpoint={self.s3.endpoint_url}&region={self.s3.region}"

    @property
    def storage_env(self) -> dict[str, str]:
        """The S3 credentials, where `storage_from_url` looks for them."""
        return {
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }

    def unfinished_uploads(self) -> list[str]:
        """The keys of the bucket's multipart uploads begun and neither completed nor aborted
        (S3's ListMultipartUploads): parts a user pays for and never sees."""
        client = self.s3.client()
        try:
            listing = client.list_multipart_uploads(Bucket=self.bucket)
            return [u["Key"] for u in listing.get("Uploads", [])]
        finally:
            client.close()

    def objects(self) -> list[str]:
        """The keys in the bucket, listed by a plain S3 client."""
        client = self.s3.client()
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        finally:
            client.close()


def _upstream(url: str, address: str) -> tuple[str, int, str]:
    """Where a server's `url` points (socat's address: `TCP:host:port`, or `UNIX-CONNECT:path`
    for PostgreSQL on a socket folder, as the embedded one is), the port to listen on, and
    the URL at `address` (its user, password and path kept, its `host=` folder dropped)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    folder = query.pop("host", [None])[0]
    port = parts.port or 5432
    if parts.hostname is None and folder is not None:
        upstream = f"UNIX-CONNECT:{folder}/.s.PGSQL.{port}"
    else:
        upstream = f"TCP:{parts.hostname}:{port}"
    user = parts.username or ""
    if parts.password:
        user = f"{user}:{parts.password}"
    netloc = f"{user}@{address}:{port}" if user else f"{address}:{port}"
    moved = urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))
    return upstream, port, moved


@contextlib.contextmanager
def forwarded(url: str, address: str, relay: Relay | None = None) -> Iterator[str]:
    """The server at `url` (on loopback or a local socket) reachable on `address` through
    `socat`, or through `relay` (tests/cluster/slow_link.py) when given, at the same port; the
    URL to give the other hosts."""
    upstream, port, moved = _upstream(url, address)
    if relay is not None:
        relay.forward(port, upstream)
        yield moved
        return
    proc = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind={address},fork,reuseaddr", upstream],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # each connection's fork dies with it (kill_group)
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"socat on {address}:{port} ended"
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"socat on {address}:{port} is silent"
                time.sleep(0.05)
        yield moved
    finally:
        kill_group(proc)


@contextlib.contextmanager
def database_host(
    address: str,
    database_url: str,
    redis_url: str,
    media_root: Path,
    relay: Relay | None = None,
) -> Iterator[DatabaseHost]:
    """PostgreSQL and Redis forwarded (by `relay` when given), moto with a fresh bucket and the
    media server over `media_root`, all on `address`; all stopped at the end."""
    with contextlib.ExitStack() as held:
        database = held.enter_context(forwarded(database_url, address, relay))
        redis = held.enter_context(forwarded(redis_url, address, relay))
        # moto's werkzeug logs a line per request, thousands in a run.
        werkzeug = logging.getLogger("werkzeug")
        held.callback(werkzeug.setLevel, werkzeug.level)
        werkzeug.setLevel(logging.WARNING)
        moto = ThreadedMotoServer(ip_address=address, port=0, verbose=False)
        moto.start()
        held.callback(moto.stop)
        host, port = moto.get_host_and_port()
        s3 = S3Server(endpoint_url=f"http://{host}:{port}")
        bucket = f"spool-cluster-{uuid.uuid4().hex[:12]}"
        client = s3.client()
        client.create_bucket(Bucket=bucket)
        client.close()
        media = MediaServer(media_root, host=address).start()
        held.callback(media.stop)
        yield DatabaseHost(address, database, redis, s3, bucket, media, relay)
