"""The URL guard: what downloads may reach. No network: IP literals, `localhost`, stubbed DNS."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from spool.adapters.ssrf import UnresolvedHost, UrlGuard, UrlRefused

REFUSED = [
    ("http://127.0.0.1/", "URL refused: 127.0.0.1 is a loopback address"),
    ("https://127.0.0.1:8443/a?b=c", "URL refused: 127.0.0.1 is a loopback address"),
    ("http://[::1]/", "URL refused: ::1 is a loopback address"),
    ("http://localhost/", "URL refused: localhost resolves to 127.0.0.1, a loopback address"),
    ("http://LOCALHOST./", "resolves to 127.0.0.1, a loopback address"),
    # Other spellings of 127.0.0.1 that getaddrinfo (inet_aton) accepts.
    ("http://2130706433/", "URL refused: 2130706433 resolves to 127.0.0.1, a loopback address"),
    ("http://0x7f.1/", "URL refused: 0x7f.1 resolves to 127.0.0.1, a loopback address"),
    ("http://017700000001/", "resolves to 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1/", "resolves to 127.0.0.1, a loopback address"),
    ("http://127.1/", "resolves to 127.0.0.1, a loopback address"),
    ("http://0x7f000001/", "resolves to 127.0.0.1, a loopback address"),
    ("http://user:pw@127.0.0.1:80/", "127.0.0.1 is a loopback address"),
    ("http://8.8.8.8@127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://0.0.0.0/", "URL refused: 0.0.0.0 is the unspecified address"),
    ("http://0/", "resolves to 0.0.0.0, the unspecified address"),
    ("http://[::]/", "URL refused: :: is the unspecified address"),
    ("http://10.1.2.3/", "URL refused: 10.1.2.3 is a private address"),
    ("http://172.16.0.1/", "is a private address"),
    ("http://192.168.1.1/", "is a private address"),
    ("http://[fd12:3456::1]/", "is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
    ("http://168.63.129.16/", "is a cloud metadata address"),
    ("http://169.254.10.1/", "169.254.10.1 is a link-local address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fec0::1]/", "fec0::1 is a site-local address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]/", "ff02::1 is a multicast address"),
    ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("http://100.100.100.200/", "is a shared (carrier-grade NAT) address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://255.255.255.255/", "is a reserved address"),
    ("http://198.18.0.1/", "is a private address"),
    # IPv6 forms that carry an IPv4 address are judged by the address they carry.
    (
        "http://[::ffff:127.0.0.1]/",
        "URL refused: ::ffff:7f00:1 is an IPv4-mapped form of 127.0.0.1, a loopback address",
    ),
    ("http://[::ffff:169.254.169.254]/", "IPv4-mapped form of 169.254.169.254, a cloud metadata"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped form of 10.0.0.1, a private address"),
    ("http://[::127.0.0.1]/", "IPv4-compatible form of 127.0.0.1, a loopback address"),
    ("http://[2002:7f00:1::]/", "6to4 form of 127.0.0.1, a loopback address"),
    ("http://[2002:a9fe:a9fe::1]/", "6to4 form of 169.254.169.254, a cloud metadata address"),
    (
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "Teredo form of 127.0.0.1, a loopback address",
    ),
    ("http://[64:ff9b::a00:1]/", "NAT64 form of 10.0.0.1, a private address"),
    ("http://[fd00::]/", "URL refused: fd00:: is a private address"),
    ("http://[fd00::1]:8080/x", "fd00::1 is a private address"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped form of 127.0.0.1, a loopback address"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "IPv4-mapped form of 127.0.0.1, a loopback address"),
    # 169.254.169.254 spelt as one decimal number, and in hex.
    ("http://2852039166/", "resolves to 169.254.169.254, a cloud metadata address"),
    ("http://0xa9fea9fe/", "resolves to 169.254.169.254, a cloud metadata address"),
    ("http://127.000.000.001/", "resolves to 127.0.0.1, a loopback address"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refuses_non_public_addresses(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        UrlGuard().check_url(url)
    assert reason in str(refused.value)
    assert str(refused.value).startswith("URL refused: ")


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/video.mp4",
        "https://1.1.1.1:8443/x",
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",  # a mapped *public* address is public
        "http://[2002:808:808::1]/",  # 6to4 of 8.8.8.8
        "HTTP://8.8.8.8/",
    ],
)
def test_admits_public_addresses(url: str) -> None:
    UrlGuard().check_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https URLs can be downloaded (file:)"),
        ("ftp://8.8.8.8/a", "only http and https URLs can be downloaded (ftp:)"),
        ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("8.8.8.8/video.mp4", "only http and https URLs can be downloaded (no scheme)"),
        ("http:///video.mp4", "has no host"),
        ("http://./video.mp4", "has no host"),
        ("http://user@127.0.0.1:80@/", "has no host"),
        ("http://[::1/", "is not a valid URL"),
        ("http://8.8.8.8:99999/", "is not a valid URL"),
    ],
)
def test_refuses_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        UrlGuard().check_url(url)
    assert reason in str(refused.value)


def test_allowlist_admits_cidrs_and_addresses() -> None:
    guard = UrlGuard(["127.0.0.1/32", "10.0.0.0/8", "fd00::5"])
    guard.check_url("http://127.0.0.1:8080/clip.mp4")
    guard.check_url("http://10.20.30.40/")
    guard.check_url("http://[fd00::5]/")
    # The same address in another spelling is the same address.
    guard.check_url("http://2130706433/")
    guard.check_url("http://[::ffff:127.0.0.1]/")
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.2 is a loopback address"):
        guard.check_url("http://127.0.0.2/")
    with pytest.raises(UrlRefused, match="cloud metadata"):
        guard.check_url("http://169.254.169.254/")


def test_allowlist_admits_a_host_by_name_only() -> None:
    guard = UrlGuard(["localhost", "Media.Example.com."])
    guard.check_url("http://localhost:8000/")
    guard.check_url("http://media.example.com/")  # admitted without even resolving it
    with pytest.raises(UrlRefused, match="loopback"):
        guard.check_url("http://127.0.0.1:8000/")


def test_allowlist_admits_a_name_when_every_address_is_admitted() -> None:
    UrlGuard(["127.0.0.0/8", "::1/128"]).check_url("http://localhost/")


@pytest.mark.parametrize("entry", ["http://example.com/", "not a host", "", "10.0.0.0/33"])
def test_allowlist_rejects_entries_it_cannot_read(entry: str) -> None:
    with pytest.raises(ValueError, match="allowlist entry"):
        UrlGuard([entry])


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        if not answers[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_refuses_when_any_resolved_address_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"media.example.com": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(UrlRefused) as refused:
        UrlGuard().check_url("https://media.example.com/v.mp4")
    assert str(refused.value) == (
        "URL refused: media.example.com resolves to 10.0.0.7, a private address"
    )
    UrlGuard(["10.0.0.0/8"]).check_url("https://media.example.com/v.mp4")


def test_public_name_is_admitted(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"media.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    UrlGuard().check_url("https://media.example.com/v.mp4")


def test_a_host_that_does_not_exist_is_refused_as_a_final_dns_failure() -> None:
    # .invalid never resolves (RFC 6761): the machine's own resolver says so, no network needed.
    with pytest.raises(UnresolvedHost) as caught:
        UrlGuard().check_url("http://nowhere.invalid/")
    assert str(caught.value) == "Could not resolve host nowhere.invalid: no such host"
    assert caught.value.final is True


def test_dns_that_does_not_answer_is_a_dns_failure_worth_retrying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(UnresolvedHost) as caught:
        UrlGuard().check_url("http://media.example.com/")
    assert str(caught.value) == (
        "Could not resolve host media.example.com: DNS did not answer "
        "(Temporary failure in name resolution)"
    )
    assert caught.value.final is False


def test_check_address_judges_one_connection() -> None:
    guard = UrlGuard(["127.0.0.1/32"])
    guard.check_address("127.0.0.1", "127.0.0.1")
    guard.check_address("media.example.com", "93.184.216.34")
    with pytest.raises(UrlRefused, match=r"media\.example\.com resolves to 10\.0\.0\.1, a private"):
        guard.check_address("media.example.com", "10.0.0.1")
    with pytest.raises(UrlRefused, match=r"fe80::1 is a link-local address"):
        guard.check_address("fe80::1", "fe80::1%lo")


@pytest.mark.parametrize(("url", "reason"), REFUSED[:12])
async def test_async_check_refuses_the_same(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        await UrlGuard().check_url_async(url)
    assert reason in str(refused.value)


async def test_async_check_admits_public_and_allowlisted() -> None:
    await UrlGuard().check_url_async("http://8.8.8.8/")
    await UrlGuard(["127.0.0.1/32"]).check_url_async("http://127.0.0.1:9/")
    with pytest.raises(UrlRefused, match="only http and https"):
        await UrlGuard().check_url_async("file:///etc/passwd")


def _hosts_file_names() -> list[tuple[str, str]]:
    """(name, address) for every name /etc/hosts gives a non-public address (localhost at least)."""
    names = [("localhost", "127.0.0.1")]
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        if not address.is_global:
            names += [(name, fields[0]) for name in fields[1:] if name != "localhost"]
    return names


@pytest.mark.parametrize(("name", "address"), _hosts_file_names())
async def test_a_name_the_resolver_maps_inside_the_network_is_refused(
    name: str, address: str
) -> None:
    # Real resolution (no stub): the name is looked up as a download would look it up.
    with pytest.raises(UrlRefused, match=f"{re.escape(name)} resolves to "):
        UrlGuard().check_url(f"http://{name}:8080/clip.mp4")
    with pytest.raises(UrlRefused, match="resolves to"):
        await UrlGuard().check_url_async(f"https://{name.upper()}./x")
