"""`POST /jobs` body validation: every documented value, limit and message, without a server.

Pure and fast: these call `validate_create_job` and its helpers directly. The tables are the
contract: a good body and the exact `JobOptions` stored, or a bad body and the exact message.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spool.api.errors import JobApiError
from spool.api.job_requests import (
    CreateJobBody,
    ValidJob,
    decode_create_job_body,
    validate_create_job,
    validate_filename,
    validate_folder,
)
from spool.domain.job import JobOptions
from spool.domain.job_options import AUDIO_CODECS_BY_FORMAT, VIDEO_CODECS_BY_FORMAT
from spool.domain.timecode import MAX_SECONDS, format_seconds, normalize_timecode, parse_timecode

URL = "https://media.test/clip.mp4"
FORBIDDEN = '(a name must not contain any of \\ / : * ? " < > |)'
DROPS = "which Windows drops"
DEVICE = "not allowed as a name with or without an extension"


def _valid(**fields: Any) -> ValidJob:
    return validate_create_job(CreateJobBody(**{"url": URL, **fields}))


def _error(**fields: Any) -> str:
    with pytest.raises(JobApiError) as caught:
        _valid(**fields)
    assert caught.value.status_code == 400
    return str(caught.value.detail)


def _options(**fields: Any) -> JobOptions:
    """The stored options for a default video job, with `fields` changed."""
    return JobOptions(**{"format": "mp4", **fields})


# --- good bodies -> the options stored --------------------------------------------------------

GOOD: list[tuple[dict[str, Any], JobOptions]] = [
    # Defaults are stored resolved.
    ({}, _options()),
    ({"audio_only": True}, _options(format="m4a", audio_only=True)),
    # Every format; an audio format alone means audio only.
    *[({"format": f}, _options(format=f)) for f in ("mp4", "mkv", "webm", "mov")],
    *[({"format": f}, _options(format=f, audio_only=True)) for f in ("m4a", "mp3", "ogg", "opus")],
    *[
        ({"format": f, "audio_only": True}, _options(format=f, audio_only=True))
        for f in ("m4a", "mp3", "ogg", "opus")
    ],
    # Codecs, including the obvious-but-true pairs of the container table.
    ({"video_codec": "copy", "audio_codec": "copy"}, _options()),
    (
        {"video_codec": "h264", "audio_codec": "aac"},
        _options(video_codec="h264", audio_codec="aac"),
    ),
    ({"video_codec": "h265"}, _options(video_codec="h265")),
    ({"format": "mkv", "video_codec": "vp9"}, _options(format="mkv", video_codec="vp9")),
    ({"format": "mkv", "audio_codec": "opus"}, _options(format="mkv", audio_codec="opus")),
    ({"audio_codec": "mp3"}, _options(audio_codec="mp3")),
    (
        {"format": "webm", "video_codec": "vp9", "audio_codec": "opus"},
        _options(format="webm", video_codec="vp9", audio_codec="opus"),
    ),
    (
        {"format": "mkv", "video_codec": "h265", "audio_codec": "mp3"},
        _options(format="mkv", video_codec="h265", audio_codec="mp3"),
    ),
    ({"format": "mov", "video_codec": "h265"}, _options(format="mov", video_codec="h265")),
    (
        {"format": "mp3", "audio_codec": "mp3"},
        _options(format="mp3", audio_only=True, audio_codec="mp3"),
    ),
    (
        {"format": "ogg", "audio_codec": "opus"},
        _options(format="ogg", audio_only=True, audio_codec="opus"),
    ),
    (
        {"format": "m4a", "audio_codec": "aac"},
        _options(format="m4a", audio_only=True, audio_codec="aac"),
    ),
    ({"audio_only": True, "video_codec": "copy"}, _options(format="m4a", audio_only=True)),
    # Bitrates: each accepted step.
    *[
        ({"audio_bitrate": b}, _options(audio_bitrate=b))
        for b in ("64k", "96k", "128k", "160k", "192k", "256k", "320k")
    ],
    # CRF bounds and presets (the preset is stored beside the CRF; it overrides it at mux).
    ({"video_quality": 0}, _options(video_quality=0)),
    ({"video_quality": 51}, _options(video_quality=51)),
    *[
        ({"quality_preset": p}, _options(quality_preset=p))
        for p in ("highest", "high", "medium", "low", "lowest")
    ],
    # Resolutions as text or number, always stored as text.
    *[({"max_resolution": r}, _options(max_resolution=r)) for r in ("best", "2160", "1080", "360")],
    *[
        ({"max_resolution": r}, _options(max_resolution=str(r)))
        for r in (2160, 1440, 1080, 720, 480, 360)
    ],
    # Flags pass through.
    (
        {"download_subtitles": True, "download_thumbnail": True},
        _options(download_subtitles=True, download_thumbnail=True),
    ),
    # Clips: stored as seconds in a decimal string.
    ({"clip_start": "00:01:30", "clip_end": "00:03:00"}, _options(clip_start="90", clip_end="180")),
    ({"clip_start": "0", "clip_end": "60"}, _options(clip_start="0", clip_end="60")),
    ({"clip_start": "1:30"}, _options(clip_start="90")),
    ({"clip_end": 12.5}, _options(clip_end="12.5")),
    ({"clip_start": 5, "clip_end": "5.001"}, _options(clip_start="5", clip_end="5.001")),
    ({"clip_start": "01:02:03.25"}, _options(clip_start="3723.25")),
    # Names: stored as given when every common file system accepts them (else refused, below).
    ({"filename": "My Video"}, _options(filename="My Video")),
    ({"folder": "shows/season 1"}, _options(folder="shows/season 1")),
    # Unsupported features at their defaults are fine: clients may send every field.
    (
        {
            "live_recording": False,
            "live_from_start": False,
            "wait_for_video": False,
            "paused": False,
            "storage": None,
            "max_duration": None,
        },
        _options(),
    ),
    # Webhooks.
    (
        {"webhook_url": "https://hooks.test/done", "enable_progress_webhook": True},
        _options(webhook_url="https://hooks.test/done", enable_progress_webhook=True),
    ),
    # Percent-encoded CR/LF is plain text in a URL: the HTTP client sends it encoded.
    (
        {"webhook_url": "http://hooks.test/a%0d%0aX-Evil:%201"},
        _options(webhook_url="http://hooks.test/a%0d%0aX-Evil:%201"),
    ),
]


@pytest.mark.parametrize(("fields", "expected"), GOOD)
def test_a_good_body_gives_these_options(fields: dict[str, Any], expected: JobOptions) -> None:
    assert _valid(**fields) == ValidJob(url=URL, options=expected)


def test_every_option_at_once() -> None:
    job = _valid(
        format="mkv",
        video_codec="h264",
        audio_codec="opus",
        audio_bitrate="128k",
        video_quality=30,
        quality_preset="low",
        max_resolution=720,
        download_subtitles=True,
        download_thumbnail=True,
        clip_start="00:00:10",
        clip_end="1:00",
        filename="Episode 1",
        folder="a/b",
        webhook_url="https://hooks.test/x",
        enable_progress_webhook=True,
    )
    assert job.options == JobOptions(
        format="mkv",
        video_codec="h264",
        audio_codec="opus",
        audio_bitrate="128k",
        video_quality=30,
        quality_preset="low",
        max_resolution="720",
        download_subtitles=True,
        download_thumbnail=True,
        clip_start="10",
        clip_end="60",
        filename="Episode 1",
        folder="a/b",
        webhook_url="https://hooks.test/x",
        enable_progress_webhook=True,
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("  https://media.test/a.mp4\n", "https://media.test/a.mp4"),
        ("HTTP://Media.Test/a.mp4", "HTTP://Media.Test/a.mp4"),
        ("http://127.0.0.1:8080/a.mp4", "http://127.0.0.1:8080/a.mp4"),
        ("http://[::1]/a.mp4", "http://[::1]/a.mp4"),
        ("https://media.test/" + "a" * (8192 - 19), "https://media.test/" + "a" * (8192 - 19)),
    ],
)
def test_a_good_url_is_stored_trimmed(given: str, stored: str) -> None:
    assert validate_create_job(CreateJobBody(url=given)).url == stored


# --- bad bodies -> the exact message ----------------------------------------------------------

FORMATS = "mp4, mkv, webm, mov, m4a, mp3, ogg or opus"

BAD: list[tuple[dict[str, Any], str]] = [
    # url
    ({"url": ""}, "Invalid URL: expected an http(s) URL"),
    ({"url": "   "}, "Invalid URL: expected an http(s) URL"),
    ({"url": "not-a-url"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "ftp://media.test/a.mp4"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "file:///etc/passwd"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "javascript:alert(1)"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "http:///no-host"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "http://[::1/a"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "http://media.test:99999/a"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "http://media.test:port/a"}, "Invalid URL: expected an http(s) URL"),
    ({"url": "not a url"}, "Invalid URL: must not contain spaces or control characters"),
    (
        {"url": "https://media.test/a\r\nX-Evil: 1"},
        "Invalid URL: must not contain spaces or control characters",
    ),
    (
        {"url": "https://media.test/a\x00"},
        "Invalid URL: must not contain spaces or control characters",
    ),
    (
        {"url": "https://user:secret@media.test/a.mp4"},
        "Invalid URL: must not contain credentials (user:password@)",
    ),
    (
        {"url": "https://media.test/" + "a" * (8193 - 19)},
        "Invalid URL: too long (max 8192 characters)",
    ),
    # unsupported features, honestly refused
    ({"live_from_start": True}, "live_from_start requires live_recording"),
    ({"max_duration": 0}, "max_duration must be a positive number of seconds"),
    ({"max_duration": -5}, "max_duration must be a positive number of seconds"),
    ({"storage": {}}, "storage must name a provider and its settings"),
    # format
    ({"format": "avi"}, f"Invalid format (expected {FORMATS})"),
    ({"format": "MP4"}, f"Invalid format (expected {FORMATS})"),
    ({"format": ""}, f"Invalid format (expected {FORMATS})"),
    (
        {"format": "mp4", "audio_only": True},
        "Invalid format: mp4 is a video format, but audio_only is set "
        "(expected m4a, mp3, ogg or opus)",
    ),
    (
        {"format": "webm", "audio_only": True},
        "Invalid format: webm is a video format, but audio_only is set "
        "(expected m4a, mp3, ogg or opus)",
    ),
    # codecs and containers
    ({"video_codec": "av1"}, "Invalid video_codec (expected copy, h264, h265 or vp9)"),
    ({"video_codec": "H264"}, "Invalid video_codec (expected copy, h264, h265 or vp9)"),
    ({"audio_codec": "flac"}, "Invalid audio_codec (expected copy, aac, opus or mp3)"),
    (
        {"format": "webm", "video_codec": "h265"},
        "Invalid video_codec: webm cannot hold h265 (use copy or vp9)",
    ),
    (
        {"format": "webm", "video_codec": "h264"},
        "Invalid video_codec: webm cannot hold h264 (use copy or vp9)",
    ),
    (
        {"video_codec": "vp9"},
        "Invalid video_codec: mp4 cannot hold vp9 (use copy, h264 or h265)",
    ),
    (
        {"audio_codec": "opus"},
        "Invalid audio_codec: mp4 cannot hold opus (use copy, aac or mp3)",
    ),
    (
        {"format": "mov", "video_codec": "vp9"},
        "Invalid video_codec: mov cannot hold vp9 (use copy, h264 or h265)",
    ),
    (
        {"audio_only": True, "video_codec": "h264"},
        "Invalid video_codec: m4a holds audio only (use copy or leave it out)",
    ),
    (
        {"format": "mp3", "video_codec": "vp9"},
        "Invalid video_codec: mp3 holds audio only (use copy or leave it out)",
    ),
    (
        {"format": "webm", "audio_codec": "aac"},
        "Invalid audio_codec: webm cannot hold aac (use copy or opus)",
    ),
    (
        {"format": "mov", "audio_codec": "opus"},
        "Invalid audio_codec: mov cannot hold opus (use copy, aac or mp3)",
    ),
    (
        {"format": "m4a", "audio_codec": "mp3"},
        "Invalid audio_codec: m4a cannot hold mp3 (use copy or aac)",
    ),
    (
        {"format": "mp3", "audio_codec": "aac"},
        "Invalid audio_codec: mp3 cannot hold aac (use copy or mp3)",
    ),
    (
        {"format": "ogg", "audio_codec": "mp3"},
        "Invalid audio_codec: ogg cannot hold mp3 (use copy or opus)",
    ),
    (
        {"format": "opus", "audio_codec": "aac"},
        "Invalid audio_codec: opus cannot hold aac (use copy or opus)",
    ),
    # bitrate, quality, preset, resolution
    *[
        (
            {"audio_bitrate": b},
            "Invalid audio_bitrate (expected 64k, 96k, 128k, 160k, 192k, 256k or 320k)",
        )
        for b in ("32k", "321k", "192", "192K", "", "128kbps")
    ],
    ({"video_quality": -1}, "Invalid video_quality (expected a CRF from 0 to 51)"),
    ({"video_quality": 52}, "Invalid video_quality (expected a CRF from 0 to 51)"),
    ({"video_quality": 10**30}, "Invalid video_quality (expected a CRF from 0 to 51)"),
    (
        {"quality_preset": "ultra"},
        "Invalid quality_preset (expected highest, high, medium, low or lowest)",
    ),
    (
        {"quality_preset": ""},
        "Invalid quality_preset (expected highest, high, medium, low or lowest)",
    ),
    *[
        (
            {"max_resolution": r},
            "Invalid max_resolution (expected best, 2160, 1440, 1080, 720, 480 or 360)",
        )
        for r in ("1080p", "4k", "BEST", "", 1000, 0, -720, " 720")
    ],
    # clips
    ({"clip_start": "60", "clip_end": "30"}, "clip_end must be after clip_start"),
    ({"clip_start": "1:00", "clip_end": 60}, "clip_end must be after clip_start"),
    # Equal once kept to the millisecond, as they are stored.
    ({"clip_start": 1.0001, "clip_end": 1.0002}, "clip_end must be after clip_start"),
    ({"clip_end": 0}, "clip_end must be greater than 0"),
    ({"clip_end": "00:00:00"}, "clip_end must be greater than 0"),
    ({"clip_start": "abc"}, "Invalid clip_start: expected HH:MM:SS, MM:SS or a number of seconds"),
    ({"clip_start": -1}, "Invalid clip_start: must not be negative"),
    ({"clip_start": "-00:01"}, "Invalid clip_start: must not be negative"),
    ({"clip_end": "1:2:3:4"}, "Invalid clip_end: expected HH:MM:SS, MM:SS or a number of seconds"),
    ({"clip_end": "00:61:00"}, "Invalid clip_end: minutes and seconds must be below 60"),
    ({"clip_end": ""}, "Invalid clip_end: expected HH:MM:SS, MM:SS or a number of seconds"),
    ({"clip_end": math.inf}, "Invalid clip_end: must be a finite number"),
    ({"clip_end": 10**400}, f"Invalid clip_end: must be at most {MAX_SECONDS} seconds"),
    # filename: refused with the field and the character or name, never rewritten
    ({"filename": "a" * 256}, "Invalid filename: too long (max 255 characters)"),
    ({"filename": "../etc/passwd"}, f"Invalid filename: '/' is not allowed {FORBIDDEN}"),
    ({"filename": "..\\..\\boot.ini"}, f"Invalid filename: '\\' is not allowed {FORBIDDEN}"),
    ({"filename": "a/b"}, f"Invalid filename: '/' is not allowed {FORBIDDEN}"),
    ({"filename": "Episode 1: The Start"}, f"Invalid filename: ':' is not allowed {FORBIDDEN}"),
    ({"filename": "what?"}, f"Invalid filename: '?' is not allowed {FORBIDDEN}"),
    ({"filename": "a*b"}, f"Invalid filename: '*' is not allowed {FORBIDDEN}"),
    ({"filename": 'say "hi"'}, f"Invalid filename: '\"' is not allowed {FORBIDDEN}"),
    ({"filename": "<b>"}, f"Invalid filename: '<' is not allowed {FORBIDDEN}"),
    ({"filename": "a>b"}, f"Invalid filename: '>' is not allowed {FORBIDDEN}"),
    ({"filename": "a|b"}, f"Invalid filename: '|' is not allowed {FORBIDDEN}"),
    ({"filename": ".."}, "Invalid filename: must not contain '..'"),
    ({"filename": "wait..what"}, "Invalid filename: must not contain '..'"),
    ({"filename": "name\x00.sh"}, "Invalid filename: control character U+0000 is not allowed"),
    ({"filename": "tab\there"}, "Invalid filename: control character U+0009 is not allowed"),
    ({"filename": "c1\x9b"}, "Invalid filename: control character U+009B is not allowed"),
    (
        {"filename": "clip\u202egpj.exe"},
        "Invalid filename: text direction control U+202E is not allowed",
    ),
    ({"filename": ""}, "Invalid filename: must not be empty"),
    ({"filename": "   "}, "Invalid filename: must not be empty"),
    ({"filename": "trailing dot."}, "Invalid filename: 'trailing dot.' ends with a dot, " + DROPS),
    ({"filename": "space "}, "Invalid filename: 'space ' ends with a space, " + DROPS),
    ({"filename": "."}, "Invalid filename: '.' ends with a dot, " + DROPS),
    *[
        ({"filename": name}, f"Invalid filename: '{stem}' is a device name on Windows, " + DEVICE)
        for name, stem in [
            ("CON", "CON"),
            ("con", "con"),
            ("Nul.tar", "Nul"),
            ("aux.mp4", "aux"),
            ("PRN", "PRN"),
            ("COM1", "COM1"),
            ("com9.x", "com9"),
            ("lpt9", "lpt9"),
            ("LPT1.tar.gz", "LPT1"),
            ("COM\u00b9", "COM\u00b9"),
            ("CON .x", "CON"),
        ]
    ],
    # folder: each name between the slashes follows the same rules
    ({"folder": "a" * 201}, "Invalid folder: too long (max 200 characters)"),
    ({"folder": ""}, "Invalid folder: must not be empty"),
    ({"folder": "//"}, "Invalid folder: must be relative (must not start with '/')"),
    ({"folder": " \t "}, "Invalid folder: control character U+0009 is not allowed"),
    ({"folder": "/etc"}, "Invalid folder: must be relative (must not start with '/')"),
    ({"folder": "\\\\server\\share"}, f"Invalid folder: '\\' is not allowed {FORBIDDEN}"),
    ({"folder": "../other-user"}, "Invalid folder: must not contain '..'"),
    ({"folder": "a/../../b"}, "Invalid folder: must not contain '..'"),
    ({"folder": "a\\..\\b"}, f"Invalid folder: '\\' is not allowed {FORBIDDEN}"),
    ({"folder": "a\x00b"}, "Invalid folder: control character U+0000 is not allowed"),
    ({"folder": "a\nb"}, "Invalid folder: control character U+000A is not allowed"),
    ({"folder": "c:/x"}, f"Invalid folder: ':' is not allowed {FORBIDDEN}"),
    ({"folder": "a/./b"}, "Invalid folder: '.' ends with a dot, " + DROPS),
    ({"folder": "shows /s1"}, "Invalid folder: 'shows ' ends with a space, " + DROPS),
    ({"folder": "con/x"}, "Invalid folder: 'con' is a device name on Windows, " + DEVICE),
    ({"folder": "\u202e"}, "Invalid folder: text direction control U+202E is not allowed"),
    # webhook_url
    (
        {"webhook_url": "https://hooks.test/" + "a" * (2049 - 19)},
        "Webhook URL too long (max 2048 characters)",
    ),
    (
        {"webhook_url": "https://hooks.test/a\r\nX-Injected: 1"},
        "Invalid webhook_url: must not contain control characters",
    ),
    (
        {"webhook_url": "https://hooks.test/a\n"},
        "Invalid webhook_url: must not contain control characters",
    ),
    (
        {"webhook_url": "https://hooks.test/\x00"},
        "Invalid webhook_url: must not contain control characters",
    ),
    (
        {"webhook_url": "https://hooks.test/\ta"},
        "Invalid webhook_url: must not contain control characters",
    ),
    (
        {"webhook_url": "https://hooks.test/\x85a"},
        "Invalid webhook_url: must not contain control characters",
    ),
    (
        {"webhook_url": "ftp://hooks.test/x"},
        "Invalid webhook_url: expected an http(s) URL with a host",
    ),
    ({"webhook_url": "hooks.test/x"}, "Invalid webhook_url: expected an http(s) URL with a host"),
    ({"webhook_url": "https://"}, "Invalid webhook_url: expected an http(s) URL with a host"),
    ({"webhook_url": ""}, "Invalid webhook_url: expected an http(s) URL with a host"),
    (
        {"webhook_url": "https://hooks.test/a b"},
        "Invalid webhook_url: expected an http(s) URL with a host",
    ),
    (
        {"webhook_url": "https://evil.test\\@hooks.test/"},
        "Invalid webhook_url: expected an http(s) URL with a host",
    ),
    (
        {"webhook_url": "https://user:pw@hooks.test/"},
        "Invalid webhook_url: must not contain credentials (user:password@)",
    ),
    (
        {"webhook_url": "https://hooks.test@evil.test/"},
        "Invalid webhook_url: must not contain credentials (user:password@)",
    ),
    ({"enable_progress_webhook": True}, "enable_progress_webhook requires webhook_url"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_a_bad_body_is_refused_with_this_message(fields: dict[str, Any], message: str) -> None:
    assert _error(**fields) == message


def test_the_first_problem_in_field_order_is_reported() -> None:
    assert _error(url="ftp://x", format="avi") == "Invalid URL: expected an http(s) URL"
    # An unsupported feature is the deal-breaker, so it is named before a fixable typo.
    assert _error(storage={}, format="avi") == "storage must name a provider and its settings"
    assert _error(format="avi", filename="..") == f"Invalid format (expected {FORMATS})"


# --- limits at their exact edges --------------------------------------------------------------


def test_filename_at_the_limit_is_kept_whole() -> None:
    assert _valid(filename="é" * 255).options.filename == "é" * 255


def test_folder_at_the_limit_is_kept_whole() -> None:
    folder = "/".join(["x" * 99, "y" * 100])
    assert len(folder) == 200
    assert _valid(folder=folder).options.folder == folder


def test_webhook_url_at_the_limit_is_kept_whole() -> None:
    url = "https://hooks.test/" + "a" * (2048 - 19)
    assert len(url) == 2048
    assert _valid(webhook_url=url).options.webhook_url == url


def test_the_container_table_holds_every_format_and_only_known_codecs() -> None:
    assert set(VIDEO_CODECS_BY_FORMAT) == {"mp4", "mkv", "webm", "mov"}
    assert set(AUDIO_CODECS_BY_FORMAT) == {"mp4", "mkv", "webm", "mov", "m4a", "mp3", "ogg", "opus"}
    for codecs in VIDEO_CODECS_BY_FORMAT.values():
        assert set(codecs) <= {"h264", "h265", "vp9"}
    for codecs in AUDIO_CODECS_BY_FORMAT.values():
        assert set(codecs) <= {"aac", "opus", "mp3"}
    # copy is never refused by the table: the mux stage decides once the source is known.
    for fmt in AUDIO_CODECS_BY_FORMAT:
        assert _valid(format=fmt, audio_codec="copy").options.audio_codec == "copy"


# --- filenames and folders: accepted as given, safe on every file system ---------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("clip", "clip"),
        ("Episode 1 - The Start", "Episode 1 - The Start"),
        ("v1.2 final", "v1.2 final"),
        # Percent-encoding is literal text here; nothing decodes it into a path.
        ("%2e%2e%2fetc", "%2e%2e%2fetc"),
        # Look-alike slashes and colons are text on every file system, not separators.
        ("a\u2215b\uff0fc\uff1a", "a\u2215b\uff0fc\uff1a"),
        ("many     spaces\u3000and\u00a0nbsp", "many     spaces\u3000and\u00a0nbsp"),
        (" leading space", " leading space"),
        (".hidden", ".hidden"),
        ("CONSOLE", "CONSOLE"),
        ("COM10", "COM10"),
        ("my con", "my con"),
        # Decomposed "é" (macOS) becomes the composed one, so one visible name is one key.
        ("cafe\u0301", "caf\u00e9"),
        ("👨\u200d👩\u200d👧 family", "👨\u200d👩\u200d👧 family"),
        ("x" * 255, "x" * 255),
    ],
)
def test_a_safe_filename_is_kept_as_given(given: str, stored: str) -> None:
    assert validate_filename(given) == stored
    assert _valid(filename=given).options.filename == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("shows", "shows"),
        ("shows/season 1", "shows/season 1"),
        ("a//b///c", "a/b/c"),
        ("a/b/", "a/b"),
        ("%2e%2e/%2f", "%2e%2e/%2f"),
        ("日本語/フォルダ", "日本語/フォルダ"),
        ("cafe\u0301/x", "caf\u00e9/x"),
    ],
)
def test_a_folder_is_normalised(given: str, stored: str) -> None:
    assert validate_folder(given) == stored


@given(st.text(max_size=40))
def test_no_accepted_name_is_refused_by_a_common_file_system(name: str) -> None:
    try:
        accepted = validate_filename(name)
    except JobApiError as exc:
        assert str(exc.detail).startswith("Invalid filename: ")
        return
    assert not set(accepted) & set('\\/:*?"<>|')
    assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in accepted)
    assert accepted and accepted[-1] not in ". " and ".." not in accepted
    assert accepted.split(".")[0].rstrip(" ").upper() not in ("CON", "PRN", "AUX", "NUL")


def test_no_accepted_folder_and_filename_escape_the_prefix() -> None:
    tricky = ["a/./b", "x\\y", " .a. /b", "con", "%2e%2e", "a\u202e/b", ".a", "a//b/"]
    for folder in tricky:
        for name in ["f", " .f. ", "COM1", "f\u202eg"]:
            try:
                job = _valid(folder=folder, filename=name)
            except JobApiError:
                continue
            key = f"{job.options.folder}/{job.options.filename}.mp4"
            parts = key.split("/")
            assert not key.startswith(("/", "\\"))
            assert all(p not in ("", ".", "..") for p in parts), key
            assert "\\" not in key and "\x00" not in key


# --- timecodes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("0", 0.0),
        ("12", 12.0),
        ("12.5", 12.5),
        (" 12 ", 12.0),
        ("5445", 5445.0),
        ("0:30", 30.0),
        ("1:30", 90.0),
        ("90:00", 5400.0),  # the leading unit is open-ended, as hours are
        ("01:30:45", 5445.0),
        ("1:2:3", 3723.0),
        ("100:00:00", 360000.0),
        ("00:00:59.5", 59.5),
        ("-0", 0.0),
        (0, 0.0),
        (42, 42.0),
        (2.25, 2.25),
        (-0.0, 0.0),
        (MAX_SECONDS, float(MAX_SECONDS)),
    ],
)
def test_parse_timecode_reads(given: str | int | float, seconds: float) -> None:
    assert parse_timecode(given) == seconds


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("abc", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("1e3", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("nan", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("inf", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("12.", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("1:2:3:4", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("1::2", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("1:30.5:00", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("00:001:00", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("+5", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("--5", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("5s", "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("١٢", "expected HH:MM:SS, MM:SS or a number of seconds"),  # Arabic-Indic digits
        ("1" * 65, "expected HH:MM:SS, MM:SS or a number of seconds"),
        (True, "expected HH:MM:SS, MM:SS or a number of seconds"),
        ("-5", "must not be negative"),
        ("-1:00", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        ("1:60", "minutes and seconds must be below 60"),
        ("00:60:00", "minutes and seconds must be below 60"),
        ("00:00:60", "minutes and seconds must be below 60"),
        (math.nan, "must be a finite number"),
        (-math.inf, "must be a finite number"),
        (MAX_SECONDS + 1, f"must be at most {MAX_SECONDS} seconds"),
        (10**400, f"must be at most {MAX_SECONDS} seconds"),
        ("9" * 60, f"must be at most {MAX_SECONDS} seconds"),
        ("999999:00:00", f"must be at most {MAX_SECONDS} seconds"),
    ],
)
def test_parse_timecode_refuses(given: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_timecode(given)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("00:01:30", "90"),
        (90, "90"),
        (90.0, "90"),
        ("12.5", "12.5"),
        ("0.0004", "0"),
        ("1.23456", "1.235"),
        ("00:00:59.9999", "60"),
        ("0", "0"),
        (MAX_SECONDS, str(MAX_SECONDS)),
    ],
)
def test_timecodes_are_stored_as_seconds(given: str | int | float, stored: str) -> None:
    assert normalize_timecode(given) == stored
    # The stored form reads back as itself: the mux stage parses it with the same function.
    assert normalize_timecode(stored) == stored
    assert format_seconds(parse_timecode(stored)) == stored


# --- the raw body: strict JSON types ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"url": "x", "video_quality": "23"}',
            "Expected `int | null`, got `str` (field: video_quality)",
        ),
        (
            b'{"url": "x", "video_quality": 23.0}',
            "Expected `int | null`, got `float` (field: video_quality)",
        ),
        (b'{"url": "x", "audio_only": "true"}', "Expected `bool`, got `str` (field: audio_only)"),
        (b'{"url": "x", "audio_only": 1}', "Expected `bool`, got `int` (field: audio_only)"),
        (
            b'{"url": "x", "max_resolution": true}',
            "Expected `int | str | null`, got `bool` (field: max_resolution)",
        ),
        (
            b'{"url": "x", "clip_start": [1]}',
            "Expected `int | float | str | null`, got `array` (field: clip_start)",
        ),
        (b'{"url": "x", "storage": "s3"}', "Expected `object | null`, got `str` (field: storage)"),
        (b'{"url": 5}', "Expected `str`, got `int` (field: url)"),
        (b"{}", "Object missing required field `url`"),
        (b"[]", "Expected `object`, got `array`"),
        (b'{"url": "x"', "Invalid JSON body: Input data was truncated"),
        (b"", "Invalid JSON body: Input data was truncated"),
    ],
)
def test_decode_refuses_wrong_json_types(raw: bytes, message: str) -> None:
    with pytest.raises(JobApiError) as caught:
        decode_create_job_body(raw)
    assert caught.value.status_code == 400
    assert caught.value.detail == message


def test_decode_refuses_an_unknown_field_naming_it() -> None:
    with pytest.raises(JobApiError) as caught:
        decode_create_job_body(b'{"url": "https://media.test/a", "fromat": "mkv"}')
    assert caught.value.status_code == 400
    assert caught.value.detail == "Object contains unknown field `fromat`"


def test_decode_keeps_every_documented_field() -> None:
    body = decode_create_job_body(
        b'{"url": "https://media.test/a", "format": "mkv", "max_resolution": 720,'
        b' "clip_start": 1.5, "clip_end": "00:00:10", "storage": {"bucket": "b"},'
        b' "max_duration": 60}'
    )
    assert body.format == "mkv"
    assert body.max_resolution == 720
    assert (body.clip_start, body.clip_end) == (1.5, "00:00:10")
    assert body.storage == {"bucket": "b"}
    assert body.max_duration == 60
    assert set(CreateJobBody.__struct_fields__) == {
        "url", "format", "video_codec", "audio_codec", "audio_bitrate", "video_quality",
        "quality_preset", "max_resolution", "audio_only", "download_subtitles",
        "download_thumbnail", "clip_start", "clip_end", "filename", "folder", "webhook_url",
        "enable_progress_webhook", "live_recording", "live_from_start", "max_duration",
        "wait_for_video", "paused", "storage", "labels", "priority", "force", "verify",
        "normalize_audio", "loudness_target", "storyboard", "storyboard_interval", "preview_clip",
        "hls",
    }  # fmt: skip
