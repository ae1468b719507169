"""`normalize_audio`: EBU R128 loudness normalisation in FFmpeg's two `loudnorm` passes.

A quiet clip made by FFmpeg comes out of a real cluster within 1 LU of the target, as FFmpeg's
own `ebur128` meter reads the uploaded file, and the job shows the loudness before and after.
The pure parts: the first pass's report, the second pass's filter, and the option's rules.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters.ffmpeg import ffmpeg_exe
from spool.adapters.muxer import ProbeInfo, StreamInfo, mux_options, plan
from spool.domain import loudness
from spool.domain.job_options import AskedOptions, InvalidOption, resolve
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_quiet_clip, media_streams

REPORT = """\
[Parsed_loudnorm_0 @ 0x7fef24001d80]
{
\t"input_i" : "-35.76",
\t"input_tp" : "-26.75",
\t"input_lra" : "0.00",
\t"input_thresh" : "-45.76",
\t"output_i" : "-23.02",
\t"output_tp" : "-13.99",
\t"output_lra" : "0.10",
\t"output_thresh" : "-33.02",
\t"normalization_type" : "dynamic",
\t"target_offset" : "0.02"
}
[out#0/null @ 0x55fef2df3700] video:0KiB audio:2250KiB subtitle:0KiB other streams:0KiB
size=N/A time=00:00:06.00 bitrate=N/A speed=  17x elapsed=0:00:00.35
"""


METER = ["-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"]


def ebur128_integrated(path: Path) -> float:
    """The file's integrated loudness (LUFS) as FFmpeg's `ebur128` meter reads it."""
    done = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path), *METER],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = done.stderr.rsplit("Summary:", 1)[-1]
    found = re.search(r"I:\s+(-?[\d.]+) LUFS", summary)
    assert found is not None, done.stderr[-2000:]
    return float(found.group(1))


@pytest.fixture(scope="module")
def quiet_clip(media_dir: Path) -> str:
    """`quiet.mp4` beside the suite's media: 4 s of the test pattern with a tone near -35 LUFS."""
    path = media_dir / "quiet.mp4"
    if not path.exists():
        make_quiet_clip(path)
    return path.name


@pytest.mark.parametrize(
    ("asked", "target", "ext"),
    [
        ({}, -23.0, "mp4"),
        ({"loudness_target": -14}, -14.0, "mp4"),
        ({"format": "m4a"}, -16.0, "m4a"),
    ],
)
async def test_a_quiet_clip_comes_out_within_one_lu_of_the_target_and_the_job_says_so(
    cluster: Cluster,
    media_server: MediaServer,
    quiet_clip: str,
    tmp_path: Path,
    asked: dict[str, Any],
    target: float,
    ext: str,
) -> None:
    job_id = await cluster.create(
        media_server.url(quiet_clip), filename="loud", normalize_audio=True, **asked
    )

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

    assert done["status"] == "Completed", done
    measured = done["loudness"]
    assert measured["target_lufs"] == target
    assert measured["before_lufs"] == pytest.approx(-35.7, abs=1.0)
    assert measured["after_lufs"] == pytest.approx(target, abs=1.0)
    assert done["audio_codec"] == "aac"  # re-encoded, whatever the source held
    async with httpx.AsyncClient() as client:
        answer = await client.get(done["s3_url"])
    assert answer.status_code == 200
    delivered = tmp_path / f"loud.{ext}"
    delivered.write_bytes(answer.content)
    assert ebur128_integrated(delivered) == pytest.approx(target, abs=1.0)
    assert "audio" in media_streams(delivered)
    events = (await cluster.client.get(f"/jobs/{job_id}/events", headers=cluster.headers())).json()[
        "events"
    ]
    [muxed] = [e["data"] for e in events if e["type"] == "MuxCompleted"]
    assert muxed["loudness"]["before"] == measured["before_lufs"]
    assert muxed["loudness"]["after"] == measured["after_lufs"]


async def test_a_job_that_does_not_normalise_shows_no_loudness(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="plain")

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert done["loudness"] is None
    assert done["audio_codec"] == "aac"


def test_the_first_pass_report_is_read_from_ffmpegs_last_lines() -> None:
    assert loudness.report(REPORT.splitlines()) == loudness.Measurement(
        integrated=-35.76, true_peak=-26.75, lra=0.0, threshold=-45.76, offset=0.02
    )


def test_silence_or_no_report_is_nothing_to_normalise() -> None:
    silent = REPORT.replace('"-35.76"', '"-inf"').replace('"-26.75"', '"-inf"')
    assert loudness.report(silent.splitlines()) is None
    assert loudness.report(["Conversion failed!"]) is None
    assert loudness.report(["{", '"input_i" : "-20.0"', "}"]) is None


def test_the_second_pass_applies_the_measurement_linearly_then_resamples() -> None:
    measured = loudness.report(REPORT.splitlines())
    assert measured is not None

    made = loudness.second_pass(-16.0, measured)

    assert made == (
        "loudnorm=I=-16:TP=-1:LRA=7:measured_I=-35.76:measured_TP=-26.75:measured_LRA=0.00"
        ":measured_thresh=-45.76:offset=0.02:linear=true,aresample=48000"
    )


def test_a_source_wider_than_the_range_keeps_its_own_so_the_gain_stays_linear() -> None:
    wide = loudness.Measurement(
        integrated=-30.0, true_peak=-10.0, lra=12.34, threshold=-40.0, offset=0.0
    )
    assert ":LRA=12.4:" in loudness.second_pass(-23.0, wide)
    wider = loudness.Measurement(
        integrated=-30.0, true_peak=-10.0, lra=80.0, threshold=-40.0, offset=0.0
    )
    assert ":LRA=50:" in loudness.second_pass(-23.0, wider)


def test_the_default_target_is_minus_16_for_audio_and_minus_23_for_video() -> None:
    assert resolve(AskedOptions(normalize_audio=True)).loudness_target == -23.0
    assert resolve(AskedOptions(normalize_audio=True, audio_only=True)).loudness_target == -16.0
    assert resolve(AskedOptions(normalize_audio=True, format="mp3")).loudness_target == -16.0
    assert resolve(AskedOptions(normalize_audio=True, loudness_target=-18.5)).loudness_target == (
        -18.5
    )
    assert resolve(AskedOptions()).loudness_target is None


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [
        ("mp4", "aac"),
        ("mkv", "aac"),
        ("webm", "opus"),
        ("m4a", "aac"),
        ("mp3", "mp3"),
        ("ogg", "opus"),
        ("opus", "opus"),
    ],
)
def test_normalising_stores_the_codec_the_audio_is_encoded_in(fmt: str, codec: str) -> None:
    assert resolve(AskedOptions(normalize_audio=True, format=fmt)).audio_codec == codec
    assert resolve(AskedOptions(format=fmt)).audio_codec == "copy"


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (
            {"normalize_audio": True, "audio_codec": "copy"},
            "normalize_audio re-encodes the audio, so audio_codec cannot be copy "
            "(leave it out or name a codec)",
        ),
        ({"loudness_target": -16}, "loudness_target requires normalize_audio"),
        (
            {"normalize_audio": True, "loudness_target": -4},
            "Invalid loudness_target (expected LUFS from -40 to -5)",
        ),
        (
            {"normalize_audio": True, "loudness_target": -41},
            "Invalid loudness_target (expected LUFS from -40 to -5)",
        ),
        (
            {"normalize_audio": True, "loudness_target": float("nan")},
            "Invalid loudness_target (expected LUFS from -40 to -5)",
        ),
    ],
)
def test_what_normalising_cannot_honour_is_refused(asked: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        resolve(AskedOptions(**asked))
    assert str(caught.value) == message


async def test_a_refused_loudness_target_is_a_400(
    cluster: Cluster, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url("clip.mp4"), "normalize_audio": True, "loudness_target": 3},
        headers=cluster.headers(),
    )
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "Invalid loudness_target (expected LUFS from -40 to -5)"},
    )


def test_the_mux_re_encodes_audio_it_could_copy_when_it_normalises() -> None:
    source = ProbeInfo(
        duration=10.0,
        streams=[StreamInfo(kind="video", codec="h264"), StreamInfo(kind="audio", codec="aac")],
        container="mp4",
    )
    options = resolve(AskedOptions(normalize_audio=True))

    made = plan(
        [source],
        Path("/out/file"),
        input_paths=[Path("/in/source.mp4")],
        **mux_options(options),
        audio_filter="loudnorm=I=-23",
    )

    assert made.transcodes_audio and not made.transcodes_video
    at = made.args.index("-af")
    assert made.args[at : at + 4] == ["-af", "loudnorm=I=-23", "-c:a", "aac"]
