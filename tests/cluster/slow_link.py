"""A slow link between a host and the database host: `tc netem` where the kernel has it, else
relays in this process that do to the host's PostgreSQL and Redis traffic what netem would.

`slow(host, delay, loss)` slows a host of a `slowable` cluster (tests/cluster/multihost.py; a
test module asks for one with `SLOWABLE = True`, tests/cluster/conftest.py): it delays every
packet by `delay` seconds each way and drops `loss` of them. With netem (`netem_unavailable`
in tests/cluster/network.py finds out once, on a throwaway namespace) the kernel does it to
everything on the host's link. Kernels built without `sch_netem` answer "Specified qdisc kind
is unknown", and a test cannot load a module into the kernel it runs on. The machine these
tests were written on has such a kernel, so there the relays ran: the database host of a
`slowable` cluster forwards PostgreSQL and Redis through relays in this process in place of
socat (tests/cluster/database_host.py). Every host reaches them at the same URLs, as in production;
they pass the traffic of a host not slowed straight through, and for a slowed one (its
connections told apart by their source address):

- every chunk read from either side is written on `delay` later, in the order it came: a
  link's latency, not a serialisation of the traffic;
- a chunk loses at least one of its segments (of `SEGMENT` bytes) with the probability that
  `loss` per packet gives, and is then held `RTO_MIN` longer, the stall a retransmission
  timeout costs TCP; what comes behind it waits, as behind a lost segment.

The relays slow the host's PostgreSQL and Redis traffic alone: its requests to S3 and to the
media server (the database host's too), and the test process's HTTP calls to it, go at full
speed, where netem slows them as well. And PostgreSQL's own checks of a silent peer
(adapters/database.py `peer_settings`: keepalives, `tcp_user_timeout`) probe the relay, which
answers while a host's link is cut: of them, only the idle-in-transaction timeout lets go of
a session a cut host left open, and an idle session stays until the host's side gives up.
`slow` answers which one ran (`Host.slowed_by`), and a test prints it.

A relay is bounded: `MAX_CONNECTIONS` at once (more are closed at once, as a full backlog
would refuse them) and `BUFFERED_CHUNKS` chunks of at most `CHUNK` bytes queued each way per
connection (it stops reading a side whose data it cannot pass on yet). Closing it closes
every connection it holds and ends its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.cluster.hosts import Host
from tests.cluster.network import netem_unavailable

SEGMENT = 1448
"""Bytes of a TCP segment on an Ethernet link (1500-byte MTU, timestamps on)."""

RTO_MIN = 0.2
"""Linux's least retransmission timeout (`TCP_RTO_MIN`): how long TCP waits before it sends a
lost segment again, at the least."""

CHUNK = 64 * 1024
"""The most a relay reads from a side at once."""

BUFFERED_CHUNKS = 16
"""Chunks a relay holds each way per connection before it stops reading that side."""

MAX_CONNECTIONS = 512
"""Each process of each host holds a pool of PostgreSQL connections (adapters/database.py
`create_pool`) and a few Redis connections: a cluster of a few hosts holds far fewer."""


@functools.cache
def netem_missing() -> str | None:
    """Why netem cannot slow a link here (asked once per test process), or None."""
    return netem_unavailable()


@dataclass(frozen=True)
class Impairment:
    """What a relay does to what it passes: seconds of delay each way, and the share of
    packets lost."""

    delay: float = 0.0
    loss: float = 0.0

    def hold(self, size: int, draw: float) -> float:
        """Seconds a chunk of `size` bytes is held, for a uniform `draw` in [0, 1)."""
        segments = max(1, math.ceil(size / SEGMENT))
        lost = draw < 1 - (1 - self.loss) ** segments
        return self.delay + (RTO_MIN if lost else 0.0)


FULL_SPEED = Impairment()


class Relay:
    """TCP relays on `address`, one port per upstream server, run by an event loop in a
    thread of their own (the test's loop may block in a host's `kill`). What passes is impaired
    as `impairments` says for the address the connection comes from, read chunk by chunk, so a
    change applies to connections already open."""

    def __init__(self, address: str, *, seed: int | None = None) -> None:
        self.address = address
        self.impairments: dict[str, Impairment] = {}
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.refused = 0
        """Connections closed at once for want of room (`MAX_CONNECTIONS`)."""

    def start(self) -> None:
        """Run the relays' event loop (`forward` needs it)."""
        self._thread.start()

    def forward(self, port: int, upstream: str) -> int:
        """Relay `port` on `address` (0: a free one) to `upstream`, `TCP:host:port` or
        `UNIX-CONNECT:path` as socat writes them; the port."""
        made = asyncio.run_coroutine_threadsafe(self._listen(port, upstream), self._loop)
        return made.result(timeout=10)

    def close(self) -> None:
        """Stop listening, close every connection, end the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self, port: int, upstream: str) -> int:
        server = await asyncio.start_server(
            functools.partial(self._relay, upstream),
            self.address,
            port,
            limit=CHUNK,
            reuse_address=True,
        )
        self._servers.append(server)
        listening: int = server.sockets[0].getsockname()[1]
        return listening

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _relay(
        self, upstream_at: str, client: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._connections.add(task)
        peer: str = writer.get_extra_info("peername")[0]
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream, upstream_writer = await _connect(upstream_at)
            ways = [
                asyncio.create_task(self._one_way(client, upstream_writer, peer)),
                asyncio.create_task(self._one_way(upstream, writer, peer)),
            ]
            try:
                # The servers and clients here close a connection whole: when one side ends,
                # nothing more is to come from the other.
                await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for way in ways:
                    way.cancel()
                await asyncio.gather(*ways, return_exceptions=True)
        except OSError:
            pass
        except asyncio.CancelledError:
            # Only `close` cancels a connection, and the stream server of Python 3.11 logs a
            # cancelled callback as an error: it ends here, quietly.
            pass
        finally:
            for end in (writer, upstream_writer):
                if end is not None:
                    end.close()
            self._connections.discard(task)

    async def _one_way(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, peer: str
    ) -> None:
        """Pass `source` to `sink`, each chunk held as `peer`'s impairment says, in order,
        until `source` ends or either side fails."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(BUFFERED_CHUNKS)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pass_on(queue, sink))
                while data := await source.read(CHUNK):
                    impairment = self.impairments.get(peer, FULL_SPEED)
                    hold = impairment.hold(len(data), self._random.random())
                    await queue.put((time.monotonic() + hold, data))
                await queue.put(None)  # what was read before the end still arrives, late
        except* OSError:
            pass


async def _connect(upstream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `upstream`, written as socat writes it."""
    kind, _, where = upstream.partition(":")
    if kind == "UNIX-CONNECT":
        return await asyncio.open_unix_connection(where, limit=CHUNK)
    assert kind == "TCP", upstream
    host, _, port = where.rpartition(":")
    return await asyncio.open_connection(host, int(port), limit=CHUNK)


async def _pass_on(
    queue: asyncio.Queue[tuple[float, bytes] | None], sink: asyncio.StreamWriter
) -> None:
    """Write each chunk of `queue` to `sink` when it is due, until the end (None)."""
    while (item := await queue.get()) is not None:
        due, data = item
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sink.write(data)
        await sink.drain()


@contextlib.contextmanager
def relay(address: str) -> Iterator[Relay]:
    """A `Relay` on `address`, closed with all it holds at the end."""
    made = Relay(address)
    made.start()
    try:
        yield made
    finally:
        made.close()


def slow(host: Host, delay: float = 0.05, loss: float = 0.01) -> str:
    """Slow `host`'s link to the database host: `delay` seconds each way, `loss` of the packets
    dropped; how ("netem" or "relay"). Undone by `unslow`, which the `cluster` fixture
    (tests/cluster/conftest.py) calls before each test."""
    if host.relay is not None:
        host.relay.impairments[host.address] = Impairment(delay, loss)
        host.slowed_by = "relay"
    else:
        reason = netem_missing()
        assert reason is None, f"{reason}, and {host.name} has no relays (`slowable`)"
        host.link.slow(delay * 1000, loss * 100)
        host.slowed_by = "netem"
    return host.slowed_by


def unslow(host: Host) -> None:
    """Give `host` its full-speed link back."""
    if host.slowed_by == "relay" and host.relay is not None:
        host.relay.impairments.pop(host.address, None)
    elif host.slowed_by == "netem":
        host.link.unslow()
    host.slowed_by = None
