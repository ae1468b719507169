"""An httpx client that connects only to addresses the URL guard admits.

Checking a URL and then letting the client resolve its host again leaves a gap: a name can
answer a public address to the check and a private one to the connection (DNS rebinding). Here
the host is resolved once, at connection time, every address it gives is judged, and the socket
is opened to the judged address itself; TLS still verifies the certificate against the name
(httpcore passes the URL's host as `server_hostname`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

import httpcore
import httpx

from spool.adapters.ssrf import UrlGuard, UrlRefused


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, but every TCP connection goes through the guard first."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self._guard.check_address(host, address)  # UrlRefused: nothing is sent
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} resolves to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("URL refused: unix sockets cannot be reached")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(guard: UrlGuard, *, timeout: float) -> httpx.AsyncClient:
    """A client for user-given URLs: no redirects, no proxies from the environment, and every
    connection judged by `guard` (UrlRefused propagates from the request)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx has no public way to hand its pool a network backend; the pool it would have built
    # is this one with the guarded backend.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=_GuardedBackend(guard),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )
