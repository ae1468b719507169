"""Client facts: device, OS and browser from real User-Agent strings; country from a real .mmdb."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from spool.adapters.client_facts import describer, parse_user_agent
from spool.adapters.settings import Settings

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
LINUX_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, ("DESKTOP", "Windows 10/11", "Chrome")),
        (IPHONE_SAFARI, ("MOBILE", "iOS", "Safari")),
        (IPAD_SAFARI, ("TABLET", "iOS", "Safari")),
        (ANDROID_CHROME, ("MOBILE", "Android", "Chrome")),
        (ANDROID_TABLET, ("TABLET", "Android", "Chrome")),
        (MAC_SAFARI, ("DESKTOP", "macOS", "Safari")),
        (LINUX_FIREFOX, ("DESKTOP", "Linux", "Firefox")),
        ("curl/8.5.0", ("DESKTOP", "", "curl")),
        ("", ("", "", "")),
    ],
)
def test_user_agent_gives_device_type_os_and_browser(
    user_agent: str, expected: tuple[str, str, str]
) -> None:
    assert parse_user_agent(user_agent) == expected


def test_without_a_geoip_database_the_country_stays_empty() -> None:
    facts = describer(Settings())("", "83.11.198.11")
    assert (facts.country_code, facts.country_name) == ("", "")


@pytest.fixture
def geoip_file(tmp_path: Path) -> Path:
    """A real MaxMind DB (GeoIP2-Country layout) with two networks, written at test time."""
    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country", languages=["en"]
    )
    writer.insert_network(
        IPSet(["83.11.0.0/16"]), {"country": {"iso_code": "PL", "names": {"en": "Poland"}}}
    )
    writer.insert_network(
        IPSet(["2001:db8::/32"]), {"country": {"iso_code": "DE", "names": {"en": "Germany"}}}
    )
    path = tmp_path / "countries.mmdb"
    writer.to_db_file(str(path))
    return path


def test_geoip_database_gives_the_country_of_an_address(geoip_file: Path) -> None:
    describe = describer(Settings(geoip_database=geoip_file))
    facts = describe(CHROME_WINDOWS, "83.11.198.11")
    assert (facts.country_code, facts.country_name) == ("PL", "Poland")
    assert (facts.device_type, facts.os_name, facts.browser_name) == (
        "DESKTOP",
        "Windows 10/11",
        "Chrome",
    )
    v6 = describe("", "2001:db8::1")
    assert (v6.country_code, v6.country_name) == ("DE", "Germany")


@pytest.mark.parametrize("address", ["10.0.0.1", "not-an-address", ""])
def test_an_address_the_database_does_not_know_has_no_country(
    geoip_file: Path, address: str
) -> None:
    facts = describer(Settings(geoip_database=geoip_file))("", address)
    assert (facts.country_code, facts.country_name) == ("", "")


def test_an_unusable_geoip_file_leaves_countries_empty_instead_of_failing(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a maxmind database")
    describe = describer(Settings(geoip_database=broken))
    assert describe("", "83.11.198.11").country_code == ""
    missing = describer(Settings(geoip_database=tmp_path / "missing.mmdb"))
    assert missing("", "83.11.198.11").country_code == ""
