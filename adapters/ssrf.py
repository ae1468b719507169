"""The URL guard: which addresses downloads may reach (server-side request forgery defence).

A URL is refused when its scheme is not http(s) or when any address its host resolves to is not
a public unicast address (loopback, private, link-local, shared, multicast, reserved, the
unspecified address, a cloud metadata endpoint, or an IPv6 form that embeds one of those),
unless the settings' allowlist admits the host or the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset({"http", "https"})

# Cloud instance-metadata endpoints hand out credentials. AWS/GCP/Azure/OpenStack use
# 169.254.169.254 (link-local anyway) and AWS's IPv6 one is fd00:ec2::254 (private anyway), but
# Azure's wire server 168.63.129.16 and Oracle's legacy 192.0.0.192 count as global addresses
# to `ipaddress`, so they must be named to be caught.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "192.0.0.192")
)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; not `is_private` in 3.11
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: embeds an IPv4
_IPV4_COMPAT = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible form (::a.b.c.d)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


class UrlRefused(ValueError):
    """A URL that downloads may not reach; str() is a user-facing reason."""


# getaddrinfo's answers that a host does not exist, as opposed to DNS not answering for now
# (EAI_AGAIN) or failing (EAI_FAIL): asking again cannot change them.
_NO_SUCH_HOST = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


class UnresolvedHost(UrlRefused):
    """The URL's host did not resolve: a DNS failure, not a policy refusal.

    `final` when the name does not exist (retrying cannot help); otherwise DNS did not answer
    this time.
    """

    def __init__(self, host: str, cause: Exception) -> None:
        self.host = host
        self.final = not isinstance(cause, socket.gaierror) or cause.errno in _NO_SUCH_HOST
        why = "no such host" if self.final else f"DNS did not answer ({_gai_reason(cause)})"
        super().__init__(f"Could not resolve host {host}: {why}")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 transition form carries, with the form's name."""
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped form", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "a 6to4 form", ip.sixtofour
    if ip.teredo is not None:
        return "a Teredo form", ip.teredo[1]
    if ip in _NAT64:
        return "a NAT64 form", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_COMPAT and int(ip) > 1:  # :: and ::1 are handled as themselves
        return "an IPv4-compatible form", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forbidden(ip: IPAddress) -> str | None:
    """Why an address may not be reached (as a noun phrase), or None if it is public."""
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            why = _forbidden(v4)
            # A transition form of a public IPv4 address is as public as that address.
            return None if why is None else f"{form} of {v4}, {why}"
        if ip.is_site_local:
            return "a site-local address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        # Connecting to 0.0.0.0 or :: reaches this machine on Linux.
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _parse_address(text: str) -> IPAddress:
    # getaddrinfo gives IPv6 link-local addresses with a zone ("fe80::1%eth0").
    return ipaddress.ip_address(text.split("%", 1)[0])


class UrlGuard:
    """Decides whether a download may reach a URL; every hop of a download asks it."""

    def __init__(self, allowlist: Sequence[str] = ()) -> None:
        """`allowlist` entries are hostnames, IP addresses or CIDRs, e.g. `127.0.0.1/32`.

        A hostname entry admits that host whatever it resolves to; an address or CIDR entry
        admits those addresses under any name.
        """
        self._hosts: set[str] = set()
        self._networks: list[IPNetwork] = []
        for raw in allowlist:
            entry = raw.strip().lower().removeprefix("[").removesuffix("]")
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _HOSTNAME.fullmatch(entry):
                raise ValueError(f"allowlist entry {raw!r} is not a hostname, IP address or CIDR")
            self._hosts.add(entry.rstrip("."))

    def __repr__(self) -> str:
        allowed = sorted(self._hosts) + [str(n) for n in self._networks]
        return f"UrlGuard(allowlist={allowed!r})"

    def _admits_address(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)):
            candidates.append(embedded[1])
        return any(c in net for c in candidates for net in self._networks)

    def _split(self, url: str) -> tuple[str, int]:
        """The host and port of an http(s) URL, or UrlRefused."""
        try:
            parts = urllib.parse.urlsplit(url.strip())
            scheme = parts.scheme.lower()
            host = parts.hostname
            port = parts.port
        except ValueError as e:  # e.g. an unbalanced "[" or a non-numeric port
            raise UrlRefused(f"URL refused: {url!r} is not a valid URL ({e})") from None
        if scheme not in _SCHEMES:
            shown = f"{scheme}:" if scheme else "no scheme"
            raise UrlRefused(f"URL refused: only http and https URLs can be downloaded ({shown})")
        host = (host or "").rstrip(".")
        if not host:
            raise UrlRefused(f"URL refused: {url!r} has no host")
        return host, port or (443 if scheme == "https" else 80)

    def _judge(self, host: str, infos: list[tuple[Any, ...]]) -> None:
        if not infos:
            raise UrlRefused(f"URL refused: {host} resolves to no address")
        for info in infos:
            self.check_address(host, str(info[4][0]))

    def check_address(self, host: str, address: str) -> None:
        """Refuse connecting to `address` (which `host` resolved to) unless it is allowed."""
        if host.lower().rstrip(".") in self._hosts:
            return
        ip = _parse_address(address)
        why = _forbidden(ip)
        if why is None or self._admits_address(ip):
            return
        shown = host.strip("[]")
        if _is_ip_literal(shown) and _parse_address(shown) == ip:
            raise UrlRefused(f"URL refused: {ip} is {why}")
        raise UrlRefused(f"URL refused: {shown} resolves to {ip}, {why}")

    def check_url(self, url: str) -> None:
        """Raise UrlRefused unless every address the URL's host resolves to may be reached."""
        host, port = self._split(url)
        if host in self._hosts:
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            # Fail closed: a host we cannot resolve is a host we cannot vouch for.
            raise UnresolvedHost(host, e) from e
        self._judge(host, infos)

    async def check_url_async(self, url: str) -> None:
        """`check_url`, resolving with the running event loop instead of blocking."""
        host, port = self._split(url)
        if host in self._hosts:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise UnresolvedHost(host, e) from e
        self._judge(host, infos)


def _is_ip_literal(host: str) -> bool:
    try:
        _parse_address(host)
    except ValueError:
        return False
    return True


def _gai_reason(e: Exception) -> str:
    if isinstance(e, socket.gaierror) and len(e.args) > 1:
        return str(e.args[1])
    return str(e)
