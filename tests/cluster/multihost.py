"""A Spool cluster over several hosts on one machine, for tests and benches.

The database host is the root namespace (tests/cluster/database_host.py); the API and the
reactors run on a host of their own (`api`); each node (`node1`, `node2`, ...) is a host
running `spool worker` with its own data and temp dirs. Hosts are network namespaces on one
bridge (tests/cluster/network.py), so each reaches the others only through its link, which a
test can cut, mend or slow, and a host can be killed whole (tests/cluster/hosts.py). This
process, on the database host, is the API's client, and reads the log and the bucket as an
auditor on that host would.

Every process is configured only through its environment (`SPOOL_*`, tests/fixtures/
processes.py), with what `compose.yaml` shares between machines: the database, Redis and
storage URLs, `SPOOL_SECRET_KEY`, and nothing on a shared file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.domain import job
from tests.cluster.database_host import DatabaseHost, database_host
from tests.cluster.hosts import Host
from tests.cluster.network import Network, network
from tests.cluster.slow_link import Relay, netem_missing, unslow
from tests.cluster.slow_link import relay as slow_relay
from tests.fixtures.processes import SpoolProcesses, stop_processes

API_PORT = 8081
"""The API's port on its own host (nothing else listens there)."""

TIMINGS = {
    "SPOOL_STALL_TIMEOUT": "10",
    "SPOOL_RECONCILE_INTERVAL": "2",
    "SPOOL_NODE_TIMEOUT": "5",
    "SPOOL_LEASE_TTL": "5",
    "SPOOL_RETRY_BACKOFF": "0.2",
    "SPOOL_DATABASE_PEER_TIMEOUT": "5",
}
"""Faster than production's defaults (docs/architecture.md, Settings), so tests wait less; a
test may override any. A node's lease on a unit it started expires `SPOOL_LEASE_TTL` after the
last of its heartbeats (one a second) that listed the unit, and the reconciler, passing every
`SPOOL_RECONCILE_INTERVAL`, hands the unit on at the first pass after that (docs/architecture.md,
Leases). Those passes stay two heartbeats apart, as production's are (10 s): the units no node
has started yet are still judged by what two passes agree on, and a unit a starved node has
just taken, in no heartbeat of it yet, must not be judged lost between them. A
node cut off mid-transaction holds the projections back until PostgreSQL lets its session go
(`SPOOL_DATABASE_PEER_TIMEOUT`): 5 s here, so a test's waits outlast it."""


@dataclass
class MultiHost:
    """The cluster's hosts, the API's URL and an admin key, and the log as the database host
    reads it."""

    network: Network
    db: DatabaseHost
    api: Host
    nodes: dict[str, Host]
    env: dict[str, str]
    root: Path
    api_url: str
    key: str
    database_url: str
    """The database as the database host reaches it (loopback or a socket)."""
    store: EventStore
    client: httpx.AsyncClient
    worker_flags: tuple[str, ...] = ()

    def add_node(self, name: str) -> Host:
        """A new host `name` running `spool worker` with node id `name`."""
        link = self.network.add(name)
        procs = SpoolProcesses(self.root / name, dict(self.env), prefix=link.exec_prefix)
        host = self.nodes[name] = Host(name, link, procs, self.db.relay)
        self.start_worker(host)
        return host

    def start_worker(self, host: Host) -> None:
        """(Re)start `spool worker` on `host`, with a temp dir of its own beside its data."""
        tmp = host.procs.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        host.procs.worker(host.name, *self.worker_flags, TMPDIR=str(tmp))

    async def restore(self) -> None:
        """Every link at full speed (unslowed, uncapped), every node's link up and its worker
        running again (after a test slowed, capped, cut or killed one), and every node
        online."""
        for host in self.hosts:
            unslow(host)
        for host in self.nodes.values():
            host.link.mend()
            host.link.unslow()
            proc = host.procs.procs.get(host.name)
            if proc is None or proc.poll() is not None:
                host.kill()  # what a dead worker left on its host
                self.start_worker(host)
        await self.wait_online(self.nodes)

    @property
    def hosts(self) -> list[Host]:
        return [self.api, *self.nodes.values()]

    def logs(self, tail: int = 2000) -> str:
        """The tail of every process's log on every host, for an assertion message."""
        return "\n".join(f"=== {h.name} ===\n{h.procs.logs(tail)}" for h in self.hosts)

    async def create_jobs(self, items: Iterable[dict[str, Any]]) -> list[str]:
        """POST /jobs/bulk (at most 100 a request): each item is `{"url", "filename"?}`."""
        made: list[str] = []
        pending = list(items)
        while pending:
            chunk, pending = pending[:100], pending[100:]
            answer = await self.client.post("/jobs/bulk", json={"jobs": chunk})
            assert answer.status_code == 201, answer.text
            made += answer.json()["job_ids"]
        return made

    async def statuses(self) -> dict[str, str]:
        """Every job's status, as GET /jobs lists them."""
        found: dict[str, str] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            answer = await self.client.get("/jobs", params=params)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            found.update({j["id"]: j["status"] for j in page["jobs"]})
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    async def wait_ended(self, job_ids: list[str], seconds: float) -> dict[str, str]:
        """Poll GET /jobs until every job in `job_ids` is in a terminal state; their states."""
        deadline = time.monotonic() + seconds
        while True:
            listed = await self.statuses()
            ended = {j: listed[j] for j in job_ids if listed.get(j) in job.TERMINAL}
            if len(ended) == len(job_ids):
                return ended
            if time.monotonic() > deadline:
                stuck = [j for j in job_ids if j not in ended]
                raise AssertionError(
                    f"{len(stuck)} jobs unfinished, {stuck[0]} at {listed.get(stuck[0])}: "
                    + await self.story(stuck[0])
                )
            await asyncio.sleep(0.5)

    async def story(self, job_id: str) -> str:
        """A job's events as the log holds them, one a line, for an assertion message."""
        events = await self.store.read_stream(job.stream_id(job_id))
        return "\n".join(f"{e.recorded_at:%H:%M:%S.%f} {e.type} {e.data}" for e in events)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's history, as GET /jobs/{id}/events answers it."""
        answer = await self.client.get(f"/jobs/{job_id}/events", params={"limit": 1000})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()["events"]
        return found

    async def online(self) -> set[str]:
        """The ids of the devices GET /api/v1/devices says are online."""
        answer = await self.client.get("/api/v1/devices", params={"status": "online"})
        assert answer.status_code == 200, answer.text
        return {d["device_id"] for d in answer.json()["data"]}

    async def wait_online(self, names: Iterable[str], seconds: float = 90) -> None:
        """Wait until every node in `names` is listed online."""
        wanted = set(names)
        deadline = time.monotonic() + seconds
        while not wanted <= await self.online():
            for name in wanted:
                proc = self.nodes[name].procs.procs.get(name)
                assert proc is None or proc.poll() is None, self.nodes[name].procs.logs()
            assert time.monotonic() < deadline, f"{wanted} not all online: {self.logs()}"
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def multihost(
    *,
    database_url: str,
    redis_url: str,
    media_root: Path,
    root: Path,
    nodes: int,
    worker_flags: tuple[str, ...] = (),
    slowable: bool = False,
    **settings: str,
) -> AsyncIterator[MultiHost]:
    """A running cluster of `nodes` worker hosts over a migrated database and a Redis database
    (both on loopback here, the database host), every node online; everything stopped and
    removed at the end, however the test ends. `settings` are `SPOOL_*` variables over
    `TIMINGS`. A `slowable` cluster's hosts can be slowed (tests/cluster/slow_link.py `slow`):
    where netem cannot, their database traffic passes relays in this process from the start,
    which a bench had better not pay for."""
    async with contextlib.AsyncExitStack() as held:
        net = held.enter_context(network())
        # What `slow` slows where netem cannot (tests/cluster/slow_link.py).
        relay: Relay | None = None
        if slowable and netem_missing() is not None:
            relay = held.enter_context(slow_relay(net.address))
        db = held.enter_context(
            database_host(net.address, database_url, redis_url, media_root, relay)
        )
        flushed = redis.Redis.from_url(redis_url)
        flushed.flushdb()  # the test's own database, left as another test's cluster left it
        flushed.close()
        key = "sk_" + secrets.token_urlsafe(24)
        env = {
            "SPOOL_DATABASE_URL": db.database_url,
            "SPOOL_REDIS_URL": db.redis_url,
            "SPOOL_STORAGE_URL": db.storage_url,
            "SPOOL_URL_ALLOWLIST": f"{db.address}/32",
            "SPOOL_SECRET_KEY": secrets.token_urlsafe(24),
            "SPOOL_RATE_LIMIT": "0",
            **db.storage_env,
            **TIMINGS,
            **settings,
        }
        link = net.add("api")
        procs = SpoolProcesses(root / "api", dict(env), prefix=link.exec_prefix)
        api = Host("api", link, procs, db.relay)
        pool = await create_pool(database_url, max_size=4)
        held.push_async_callback(pool.close)
        client = httpx.AsyncClient(
            base_url=f"http://{link.address}:{API_PORT}", headers={"x-api-key": key}, timeout=30
        )
        held.push_async_callback(client.aclose)
        cluster = MultiHost(
            net,
            db,
            api,
            {},
            env,
            root,
            "",
            key,
            database_url,
            EventStore(pool),
            client,
            worker_flags,
        )
        held.callback(_stop, cluster)
        api.procs.start("reactors", "reactors")
        for n in range(1, nodes + 1):
            cluster.add_node(f"node{n}")
        with api.procs.kept_logs():
            cluster.api_url = await asyncio.to_thread(
                api.procs.api, host=link.address, port=API_PORT, SPOOL_API_KEY=key
            )
        try:
            await cluster.wait_online(cluster.nodes)
            yield cluster
        except BaseException:
            print(cluster.logs(3000))
            raise


def _stop(cluster: MultiHost) -> None:
    """Stop every process on every host side by side, then kill what any left behind."""
    stop_processes(*(p for h in cluster.hosts for p in h.procs.procs.values()), seconds=15)
    for host in cluster.hosts:
        host.kill()
