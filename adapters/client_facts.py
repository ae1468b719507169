"""What a viewer's User-Agent and address tell: device type, OS, browser and country.

The User-Agent is parsed with `ua-parser` (uap-python 1.x, the maintained port of the uap-core
rules, with its native matcher when `ua-parser-rs` is installed); the country comes from a
MaxMind DB file (`maxminddb`) when `geoip_database` is set. Without one, the country stays
empty: it is never guessed.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb
import ua_parser

from spool.adapters.settings import Settings
from spool.adapters.viewer_sessions import ClientFacts, Describe

log = logging.getLogger("spool.viewers")

_OS_NAMES = {
    "Mac OS X": "macOS",
    "Chrome OS": "ChromeOS",
    "Ubuntu": "Linux",
    "Debian": "Linux",
    "Fedora": "Linux",
    "Red Hat": "Linux",
    "Linux Mint": "Linux",
    "Arch Linux": "Linux",
    "Other": "",
}

_BROWSER_NAMES = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome WebView",
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "Safari",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "Other": "",
}

_TABLET_WORDS = ("ipad", "tablet", "kindle", "silk", "playbook", "tab ")


@lru_cache(maxsize=4096)
def parse_user_agent(user_agent: str) -> tuple[str, str, str]:
    """(device type, OS name, browser name) of a User-Agent; empty strings when unknown.

    Any non-empty User-Agent that is neither a phone nor a tablet counts as DESKTOP, since the
    list knows only those three kinds (so `curl` is a DESKTOP with browser "curl").
    """
    if not user_agent.strip():
        return "", "", ""
    result = ua_parser.parse(user_agent)
    browser = result.user_agent.family if result.user_agent else ""
    return (
        _device_type(user_agent, result),
        _os_name(result.os),
        _BROWSER_NAMES.get(browser, browser),
    )


def _os_name(os: ua_parser.OS | None) -> str:
    if os is None:
        return ""
    if os.family == "Windows":
        # Windows 11 still sends "Windows NT 10.0": the User-Agent cannot tell them apart.
        return "Windows 10/11" if os.major == "10" else f"Windows {os.major or ''}".strip()
    return _OS_NAMES.get(os.family, os.family)


def _device_type(user_agent: str, result: ua_parser.Result) -> str:
    lowered = user_agent.lower()
    device = result.device
    family = (device.family if device else "").lower()
    brand = (device.brand or "" if device else "").lower()
    os_family = result.os.family if result.os else ""
    if any(w in family or w in lowered for w in _TABLET_WORDS) or "tablet" in brand:
        return "TABLET"
    if os_family == "Android":
        # Google's rule: Android phones send "Mobile"; tablets leave it out.
        return "MOBILE" if "mobile" in lowered else "TABLET"
    if os_family in ("iOS", "Windows Phone", "BlackBerry OS", "KaiOS") or "mobile" in lowered:
        return "MOBILE"
    return "DESKTOP"


class GeoIp:
    """Countries from a MaxMind DB (GeoLite2-Country, GeoIP2-City and the like)."""

    def __init__(self, path: Path) -> None:
        self._reader = maxminddb.open_database(str(path))

    @lru_cache(maxsize=65536)  # noqa: B019 - one reader per process, kept for its life
    def country(self, address: str) -> tuple[str, str]:
        """(ISO code, English name) of an address; empty when unknown or not an address."""
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return "", ""
        try:
            found: Any = self._reader.get(ip)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return "", ""
        if not isinstance(found, dict):
            return "", ""
        country = found.get("country") or found.get("registered_country") or {}
        code = str(country.get("iso_code") or "").upper()
        name = str((country.get("names") or {}).get("en") or "")
        if len(code) != 2 or not code.isalpha():
            return "", ""
        return code, name


def describer(settings: Settings) -> Describe:
    """The `describe(user_agent, remote_address)` that a ViewerRecorder fills client facts with.

    A configured GeoIP file that cannot be opened is logged and left out: viewers are then
    recorded without a country rather than not at all.
    """
    geoip: GeoIp | None = None
    if settings.geoip_database is not None:
        try:
            geoip = GeoIp(settings.geoip_database)
        except (OSError, maxminddb.InvalidDatabaseError) as exc:
            log.error("GeoIP database %s unusable, countries stay empty: %s",
                      settings.geoip_database, exc)  # fmt: skip

    def describe(user_agent: str, remote_address: str) -> ClientFacts:
        device_type, os_name, browser_name = parse_user_agent(user_agent)
        code, name = geoip.country(remote_address) if geoip and remote_address else ("", "")
        return ClientFacts(device_type, os_name, browser_name, code, name)

    return describe
