"""An aiohttp resolver that hands out only addresses the URL guard admits.

A user's own storage endpoint is checked when it is configured, but aiobotocore (aiohttp
underneath) resolves its name again for every new connection: a name that answered a public
address then could answer `169.254.169.254` or `10.0.0.5` now (DNS rebinding), and the node's
uploads, deletes and the API's playback reads would go there. aiohttp connects to the addresses
its resolver returns (TLS still checks the certificate against the name), so judging them here
closes that gap. IP literals are never resolved; they were judged when configured and cannot
change.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from spool.adapters.ssrf import UnresolvedHost, UrlGuard, UrlRefused


class RefusedAddress(OSError):
    """The storage endpoint's name resolved to an address the guard refuses, or to nothing at
    all (it does not exist): either way, asking again gives the same answer."""


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, with every answer judged by `guard`."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            answers = await self._inner.resolve(host, port, family)
        except socket.gaierror as exc:
            unresolved = UnresolvedHost(host, exc)
            if unresolved.final:
                # "Could not resolve host ...: no such host", not a connection error to retry.
                raise RefusedAddress(str(unresolved)) from None
            raise
        for answer in answers:
            try:
                self._guard.check_address(host, answer["host"])
            except UrlRefused as exc:
                # An OSError, so aiohttp reports it as a failed connection, naming the reason.
                raise RefusedAddress(str(exc)) from None
        return answers

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_args(guard: UrlGuard | None) -> dict[str, Any]:
    """`AioConfig(connector_args=...)` for an endpoint a user gave: resolved through `guard`."""
    return {} if guard is None else {"resolver": GuardedResolver(guard)}
