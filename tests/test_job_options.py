"""Job options are defined once (domain/job_options.py), and the API is what that definition says.

The served OpenAPI document's create body holds every option the domain declares; a job asked
for nothing but its URL is created with the domain's resolved defaults; a refused value gets
the domain's own message, from `POST /jobs` and `POST /jobs/bulk` alike; and whatever the domain
accepts, the muxer can make.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from spool.adapters.event_store import EventStore
from spool.adapters.muxer import ProbeInfo, StreamInfo, mux_options, plan
from spool.domain import job
from spool.domain.job_options import (
    AUDIO_CODECS_BY_FORMAT,
    AUDIO_FORMATS,
    VIDEO_CODECS_BY_FORMAT,
    VIDEO_FORMATS,
    AskedOptions,
    InvalidOption,
    JobOptions,
    resolve,
)

URL = "https://media.test/clip.mp4"


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _refusal(**asked: Any) -> str:
    """What the domain says about these options."""
    with pytest.raises(InvalidOption) as caught:
        resolve(msgspec.convert(asked, AskedOptions))
    return str(caught.value)


async def test_every_domain_option_is_a_create_job_body_field_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    body = doc["components"]["schemas"]["CreateJobBody"]["properties"]
    defaults = AskedOptions()
    for name in AskedOptions.__struct_fields__:
        assert name in body, name
        default = getattr(defaults, name)
        # The document names a default only where there is one to state (not null).
        assert body[name].get("default") == default, name
    assert set(body) - set(AskedOptions.__struct_fields__) == {"url", "paused", "storage", "labels"}


async def test_a_job_asked_for_its_url_alone_is_created_with_the_domain_defaults(
    client: httpx.AsyncClient, api_key: str, store: EventStore
) -> None:
    answer = await client.post("/jobs", json={"url": URL}, headers=_auth(api_key))
    assert answer.status_code == 201, answer.text
    [created, *_] = await store.read_stream(job.stream_id(answer.json()["job_id"]))
    assert isinstance(created.data, job.JobCreated)
    assert created.data.options == resolve(AskedOptions()) == JobOptions(format="mp4")


BAD_OPTIONS: list[dict[str, Any]] = [
    {"format": "avi"},
    {"format": "mp4", "audio_only": True},
    {"format": "webm", "video_codec": "h264"},
    {"audio_codec": "flac"},
    {"audio_bitrate": "1k"},
    {"video_quality": 52},
    {"quality_preset": "ultra"},
    {"max_resolution": "999"},
    {"clip_start": "00:00:10", "clip_end": "00:00:05"},
    {"filename": "a/b"},
    {"webhook_url": "ftp://hooks.test/"},
    {"enable_progress_webhook": True},
    {"live_from_start": True},
    {"max_duration": 0},
    {"normalize_audio": True, "audio_codec": "copy"},
    {"storyboard": True, "audio_only": True},
    {"preview_clip": {"format": "gif"}},
]


@pytest.mark.parametrize("asked", BAD_OPTIONS)
async def test_an_option_the_domain_refuses_is_a_400_with_the_domains_message(
    client: httpx.AsyncClient, api_key: str, asked: dict[str, Any]
) -> None:
    message = _refusal(**asked)
    single = await client.post("/jobs", json={"url": URL, **asked}, headers=_auth(api_key))
    assert (single.status_code, single.json()) == (400, {"error": message})
    bulk = await client.post(
        "/jobs/bulk", json={"jobs": [{"url": URL}], **asked}, headers=_auth(api_key)
    )
    assert (bulk.status_code, bulk.json()) == (400, {"error": f"jobs[0]: {message}"})


@pytest.mark.parametrize(
    "asked",
    [
        {},
        {"audio_only": True},
        {"format": "opus"},
        {"format": "mkv", "video_codec": "vp9", "audio_codec": "opus", "audio_bitrate": "96k"},
        {"max_resolution": 720, "quality_preset": "low", "video_quality": 30},
        {"clip_start": 1.5, "clip_end": "00:00:10"},
        {"filename": "Episode 1", "folder": "shows/a", "download_subtitles": True},
        {"webhook_url": " https://hooks.test/x ", "enable_progress_webhook": True},
        {"live_recording": True, "live_from_start": True, "max_duration": 60},
        {"normalize_audio": True, "format": "ogg"},
        {"normalize_audio": True, "loudness_target": -14, "audio_codec": "mp3"},
        {"storyboard": True, "storyboard_interval": 2.5, "preview_clip": True},
        {"preview_clip": {"start": "00:00:01.5", "duration": 2, "format": "webp"}},
    ],
)
def test_a_jobs_options_asked_again_give_the_same_options(asked: dict[str, Any]) -> None:
    """What a job was created with is itself a request the rules take as it is."""
    options = resolve(msgspec.convert(asked, AskedOptions))
    assert resolve(options) == options


SOURCES = [
    [StreamInfo(kind="video", codec="h264"), StreamInfo(kind="audio", codec="aac")],
    [StreamInfo(kind="video", codec="vp9"), StreamInfo(kind="audio", codec="opus")],
    [StreamInfo(kind="video", codec="prores"), StreamInfo(kind="audio", codec="pcm_s24le")],
]


@pytest.mark.parametrize("fmt", VIDEO_FORMATS + AUDIO_FORMATS)
def test_every_format_and_codec_the_domain_accepts_the_muxer_can_write(fmt: str) -> None:
    """A job the API accepts never fails later because the muxer cannot make what it asked."""
    video_codecs = ("copy", *VIDEO_CODECS_BY_FORMAT.get(fmt, ()))
    audio_codecs = ("copy", *AUDIO_CODECS_BY_FORMAT[fmt])
    for video_codec, audio_codec in itertools.product(video_codecs, audio_codecs):
        options = resolve(
            AskedOptions(format=fmt, video_codec=video_codec, audio_codec=audio_codec)
        )
        for streams in SOURCES:
            source = ProbeInfo(duration=10.0, streams=streams, container="mkv")
            made = plan(
                [source],
                Path("/out/file"),
                input_paths=[Path("/in/source.mkv")],
                **mux_options(options),
            )
            assert made.output_ext == fmt
