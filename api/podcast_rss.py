"""The RSS 2.0 document of a podcast feed, with the iTunes tags podcast apps read.

Pure: given the channel and its episodes, the bytes to send. Text from sources (titles,
descriptions) is made valid XML 1.0 first: a control character a source left in a title would
make a strict parser refuse the whole feed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import NamedTuple

ITUNES = "http://www.itunes.com/dtds/podcast-1.0.dtd"
ATOM = "http://www.w3.org/2005/Atom"
ET.register_namespace("itunes", ITUNES)
ET.register_namespace("atom", ATOM)

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
DESCRIPTION_CHARS = 4000
"""A longer description is cut: some apps show the whole of it in a list."""


class Episode(NamedTuple):
    """One item: a completed job and the URL its file is fetched from."""

    guid: str
    title: str
    published: datetime
    url: str
    length: int
    media_type: str
    duration: float | None
    description: str | None


class Channel(NamedTuple):
    """The feed itself: `self_url` is where it is read from (its token included)."""

    title: str
    link: str
    description: str
    self_url: str
    built_at: datetime


def _text(value: str) -> str:
    return _NOT_XML.sub("", value)


def _child(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = _text(text)
    return element


def _date(at: datetime) -> str:
    return format_datetime(at, usegmt=True)


def rss(channel: Channel, episodes: Sequence[Episode]) -> bytes:
    """The feed as RSS 2.0 (UTF-8), its items in the order given."""
    root = ET.Element("rss", {"version": "2.0"})
    ch = _child(root, "channel")
    _child(ch, "title", channel.title)
    _child(ch, "link", channel.link)
    _child(ch, "description", channel.description)
    _child(ch, "generator", "Spool")
    _child(ch, "lastBuildDate", _date(channel.built_at))
    _child(
        ch,
        f"{{{ATOM}}}link",
        href=channel.self_url,
        rel="self",
        type="application/rss+xml",
    )
    _child(ch, f"{{{ITUNES}}}author", "Spool")
    _child(ch, f"{{{ITUNES}}}summary", channel.description)
    _child(ch, f"{{{ITUNES}}}explicit", "false")
    _child(ch, f"{{{ITUNES}}}type", "episodic")
    # A private feed: directories that find its URL must not list it.
    _child(ch, f"{{{ITUNES}}}block", "Yes")
    for episode in episodes:
        item = _child(ch, "item")
        _child(item, "title", episode.title)
        _child(item, f"{{{ITUNES}}}title", episode.title)
        _child(item, "guid", episode.guid, isPermaLink="false")
        _child(item, "pubDate", _date(episode.published))
        _child(
            item,
            "enclosure",
            url=episode.url,
            length=str(episode.length),
            type=episode.media_type,
        )
        if episode.description:
            _child(item, "description", episode.description[:DESCRIPTION_CHARS])
        if episode.duration is not None:
            _child(item, f"{{{ITUNES}}}duration", str(round(episode.duration)))
        _child(item, f"{{{ITUNES}}}episodeType", "full")
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body
