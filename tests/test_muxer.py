"""The muxer: `plan` exhaustively (pure and fast), then a few small runs of real FFmpeg."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from spool.adapters.muxer import (
    AUDIO_CODECS,
    QUALITY_PRESETS,
    VIDEO_CODECS,
    MuxCancelled,
    MuxFailed,
    MuxPlan,
    ProbeInfo,
    StreamInfo,
    Unreadable,
    _Progress,
    last_error,
    mux,
    output_path,
    parse_probe,
    plan,
    probe,
)
from tests.fixtures.media import (
    make_audio_only,
    make_clip,
    make_video_only,
    media_duration,
    media_streams,
    video_size,
)

# ---------------------------------------------------------------------------------------------
# plan: pure, so every rule is checked on hand-made probe results

OUT = Path("/out/result")


def _video(codec: str = "h264", width: int = 1920, height: int = 1080) -> StreamInfo:
    return StreamInfo(kind="video", codec=codec, width=width, height=height)


def _audio(codec: str = "aac") -> StreamInfo:
    return StreamInfo(kind="audio", codec=codec)


def _info(*streams: StreamInfo, duration: float | None = 10.0) -> ProbeInfo:
    return ProbeInfo(duration=duration, streams=list(streams), container="mp4")


def _plan(*inputs: ProbeInfo, output: Path = OUT, **options: object) -> MuxPlan:
    paths = [Path(f"/in/{i}.bin") for i in range(len(inputs))]
    return plan(list(inputs), output, input_paths=paths, **options)  # type: ignore[arg-type]


def _values(args: list[str], flag: str) -> list[str]:
    """Every value that follows `flag` in an argument list."""
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


def test_every_plan_starts_quiet_with_machine_readable_progress_and_ends_in_the_output() -> None:
    args = _plan(_info(_video(), _audio())).args
    quiet = ["-y", "-nostdin", "-hide_banner", "-loglevel", "error"]
    assert args[:8] == [*quiet, "-progress", "pipe:1", "-nostats"]
    assert args[-3:] == ["-f", "mp4", "file:/out/result.mp4"]


def test_separate_video_and_audio_merge_into_mp4_without_re_encoding() -> None:
    video, audio = _info(_video()), _info(_audio())
    p = _plan(video, audio)
    assert _values(p.args, "-i") == ["file:/in/0.bin", "file:/in/1.bin"]
    assert _values(p.args, "-map") == ["0:v:0", "1:a:0"]
    assert _values(p.args, "-c:v") == ["copy"] and _values(p.args, "-c:a") == ["copy"]
    assert (p.output_ext, p.video_codec, p.audio_codec) == ("mp4", "h264", "aac")
    assert not p.transcodes_video and not p.transcodes_audio
    assert _values(p.args, "-movflags") == ["+faststart"]


def test_a_separate_audio_input_wins_over_the_video_inputs_own_audio() -> None:
    p = _plan(_info(_video(), _audio("mp3")), _info(_audio("aac")))
    assert _values(p.args, "-map") == ["0:v:0", "1:a:0"]
    assert p.audio_codec == "aac"


def test_one_input_with_both_streams_maps_both_from_it() -> None:
    assert _values(_plan(_info(_video(), _audio())).args, "-map") == ["0:v:0", "0:a:0"]


def test_video_without_audio_maps_no_audio() -> None:
    p = _plan(_info(_video()))
    assert _values(p.args, "-map") == ["0:v:0"] and "-c:a" not in p.args
    assert p.audio_codec is None and not p.transcodes_audio


@pytest.mark.parametrize(
    ("fmt", "video", "audio", "muxer"),
    [
        ("mp4", "h264", "aac", "mp4"),
        ("mp4", "hevc", "mp3", "mp4"),
        ("mp4", "av1", "alac", "mp4"),
        ("mov", "h264", "aac", "mov"),
        ("mkv", "vp9", "opus", "matroska"),
        ("mkv", "mpeg2video", "ac3", "matroska"),
        ("webm", "vp9", "opus", "webm"),
        ("webm", "av1", "vorbis", "webm"),
        ("webm", "vp8", "vorbis", "webm"),
    ],
)
def test_codecs_the_container_holds_are_copied(
    fmt: str, video: str, audio: str, muxer: str
) -> None:
    p = _plan(_info(_video(video), _audio(audio)), format=fmt)
    assert _values(p.args, "-c:v") == ["copy"] and _values(p.args, "-c:a") == ["copy"]
    assert (p.video_codec, p.audio_codec) == (video, audio)
    assert p.args[-3:] == ["-f", muxer, f"file:/out/result.{fmt}"]


def test_webm_from_h264_and_aac_transcodes_to_vp9_and_opus() -> None:
    p = _plan(_info(_video(), _audio()), format="webm")
    assert (p.video_codec, p.audio_codec) == ("vp9", "opus")
    assert p.transcodes_video and p.transcodes_audio
    assert _values(p.args, "-c:v") == ["libvpx-vp9"] and _values(p.args, "-c:a") == ["libopus"]
    # Constant quality needs -b:v 0 in libvpx; realtime keeps a cluster's VP9 work bounded.
    assert _values(p.args, "-b:v") == ["0"] and _values(p.args, "-crf") == ["23"]
    assert _values(p.args, "-deadline") == ["realtime"] and _values(p.args, "-cpu-used") == ["8"]
    assert _values(p.args, "-b:a") == ["192k"]
    assert "-movflags" not in p.args


@pytest.mark.parametrize("audio", ["opus", "vorbis", "flac", "ac3"])
def test_audio_copy_falls_back_to_aac_when_mp4_cannot_hold_the_source(audio: str) -> None:
    p = _plan(_info(_video()), _info(_audio(audio)), format="mp4", audio_bitrate="128k")
    assert p.audio_codec == "aac" and p.transcodes_audio
    assert _values(p.args, "-c:a") == ["aac"] and _values(p.args, "-b:a") == ["128k"]
    assert _values(p.args, "-c:v") == ["copy"]


@pytest.mark.parametrize(("fmt", "encoder"), [("mp4", "libx264"), ("mov", "libx264")])
def test_vp9_video_into_an_apple_container_is_re_encoded_to_h264(fmt: str, encoder: str) -> None:
    p = _plan(_info(_video("vp9"), _audio("opus")), format=fmt)
    assert p.video_codec == "h264" and _values(p.args, "-c:v") == [encoder]
    assert _values(p.args, "-pix_fmt") == ["yuv420p"]


def test_mkv_holds_anything_so_never_falls_back() -> None:
    p = _plan(_info(_video("prores"), _audio("pcm_s24le")), format="mkv")
    assert not p.transcodes_video and not p.transcodes_audio


@pytest.mark.parametrize(
    ("asked", "encoder", "codec"),
    [("h264", "libx264", "h264"), ("h265", "libx265", "hevc"), ("vp9", "libvpx-vp9", "vp9")],
)
def test_an_asked_video_codec_is_encoded_even_from_the_same_codec(
    asked: str, encoder: str, codec: str
) -> None:
    fmt = "webm" if asked == "vp9" else "mkv"
    p = _plan(_info(_video(codec), _audio("opus")), format=fmt, video_codec=asked)
    assert p.transcodes_video and p.video_codec == codec
    assert _values(p.args, "-c:v") == [encoder]


@pytest.mark.parametrize(
    ("asked", "encoder"), [("aac", "aac"), ("opus", "libopus"), ("mp3", "libmp3lame")]
)
def test_an_asked_audio_codec_is_encoded_at_the_asked_bitrate(asked: str, encoder: str) -> None:
    p = _plan(_info(_video(), _audio(asked)), format="mkv", audio_codec=asked, audio_bitrate="96k")
    assert p.transcodes_audio and p.audio_codec == asked
    assert _values(p.args, "-c:a") == [encoder] and _values(p.args, "-b:a") == ["96k"]


def test_hevc_in_mp4_is_tagged_hvc1_for_apple_players() -> None:
    assert _values(_plan(_info(_video("hevc"))).args, "-tag:v") == ["hvc1"]
    assert _values(_plan(_info(_video("hevc")), format="mkv").args, "-tag:v") == []


@pytest.mark.parametrize(("preset", "crf"), sorted(QUALITY_PRESETS.items()))
def test_quality_preset_overrides_video_quality(preset: str, crf: int) -> None:
    p = _plan(_info(_video()), video_codec="h264", video_quality=40, quality_preset=preset)
    assert _values(p.args, "-crf") == [str(crf)]


def test_quality_presets_run_from_best_to_smallest() -> None:
    crfs = [QUALITY_PRESETS[n] for n in ("highest", "high", "medium", "low", "lowest")]
    assert crfs == sorted(crfs) == [18, 20, 23, 28, 32]


def test_video_quality_is_the_crf_without_a_preset_and_unused_when_copying() -> None:
    assert _values(_plan(_info(_video()), video_codec="h264", video_quality=30).args, "-crf") == [
        "30"
    ]
    assert "-crf" not in _plan(_info(_video()), video_quality=30, quality_preset="low").args


@pytest.mark.parametrize("fmt", ["mp4", "mov", "m4a"])
def test_mp4_family_gets_faststart(fmt: str) -> None:
    p = _plan(_info(_video(), _audio()), format=fmt)
    assert _values(p.args, "-movflags") == ["+faststart"]


@pytest.mark.parametrize("fmt", ["mkv", "webm", "mp3", "ogg", "opus"])
def test_other_containers_get_no_movflags(fmt: str) -> None:
    assert "-movflags" not in _plan(_info(_video("vp9"), _audio("opus")), format=fmt).args


# --- audio only


@pytest.mark.parametrize(
    ("fmt", "source", "encoder", "codec", "muxer"),
    [
        (None, "aac", None, "aac", "ipod"),
        ("m4a", "aac", None, "aac", "ipod"),
        ("m4a", "opus", "aac", "aac", "ipod"),
        ("mp3", "aac", "libmp3lame", "mp3", "mp3"),
        ("mp3", "mp3", None, "mp3", "mp3"),
        ("ogg", "opus", None, "opus", "ogg"),
        ("ogg", "vorbis", None, "vorbis", "ogg"),
        ("ogg", "aac", "libvorbis", "vorbis", "ogg"),
        ("opus", "opus", None, "opus", "opus"),
        ("opus", "aac", "libopus", "opus", "opus"),
    ],
)
def test_audio_only_extracts_into_the_asked_audio_format(
    fmt: str | None, source: str, encoder: str | None, codec: str, muxer: str
) -> None:
    p = _plan(_info(_video(), _audio(source)), format=fmt, audio_only=True, video_codec="h264")
    assert _values(p.args, "-map") == ["0:a:0"]
    assert "-c:v" not in p.args and p.video_codec is None and not p.transcodes_video
    assert p.audio_codec == codec and p.output_ext == (fmt or "m4a")
    assert _values(p.args, "-c:a") == [encoder or "copy"]
    assert p.transcodes_audio is (encoder is not None)
    assert _values(p.args, "-f") == [muxer]


def test_an_audio_format_implies_audio_only() -> None:
    p = _plan(_info(_video(), _audio()), format="mp3")
    assert _values(p.args, "-map") == ["0:a:0"] and p.video_codec is None


def test_audio_only_into_a_video_container_keeps_that_container() -> None:
    p = _plan(_info(_video(), _audio("opus")), format="webm", audio_only=True)
    assert _values(p.args, "-map") == ["0:a:0"] and p.output_ext == "webm"
    assert _values(p.args, "-c:a") == ["copy"]


def test_audio_only_without_audio_is_refused() -> None:
    with pytest.raises(MuxFailed, match="no audio stream"):
        _plan(_info(_video()), audio_only=True)


def test_a_file_with_no_streams_is_refused() -> None:
    with pytest.raises(MuxFailed, match="no audio or video"):
        _plan(_info(StreamInfo(kind="subtitle", codec="subrip")))


def test_an_audio_only_source_into_a_video_format_keeps_just_the_audio() -> None:
    p = _plan(_info(_audio()), format="mp4")
    assert _values(p.args, "-map") == ["0:a:0"] and p.video_codec is None


# --- clipping


def test_a_clip_seeks_every_input_and_cuts_exactly_by_re_encoding_video() -> None:
    p = _plan(_info(_video()), _info(_audio()), clip_start=5.0, clip_end=12.5)
    args = p.args
    # -ss before each -i seeks that input; -t after them bounds the output.
    assert args[args.index("-i") - 2 : args.index("-i")] == ["-ss", "5.000"]
    assert _values(args, "-ss") == ["5.000", "5.000"]
    assert _values(args, "-t") == ["7.500"]
    assert args.index("-t") > len(args) - args[::-1].index("-i") - 1
    assert p.transcodes_video and p.video_codec == "h264"
    assert _values(args, "-c:a") == ["copy"]


def test_a_clip_with_only_an_end_can_still_copy() -> None:
    p = _plan(_info(_video(), _audio()), clip_end=3.0)
    assert _values(p.args, "-ss") == [] and _values(p.args, "-t") == ["3.000"]
    assert not p.transcodes_video


def test_a_clip_with_only_a_start_runs_to_the_end() -> None:
    p = _plan(_info(_video(), _audio()), clip_start=2.0)
    assert _values(p.args, "-ss") == ["2.000"] and "-t" not in p.args


def test_a_clip_of_vp9_in_mkv_keeps_vp9() -> None:
    assert _plan(_info(_video("vp9")), format="mkv", clip_start=1.0).video_codec == "vp9"


def test_a_clip_of_audio_only_copies_the_audio() -> None:
    p = _plan(_info(_audio()), audio_only=True, clip_start=1.0, clip_end=2.0)
    assert _values(p.args, "-c:a") == ["copy"] and not p.transcodes_video


@pytest.mark.parametrize(("start", "end"), [(5.0, 5.0), (5.0, 2.0), (-1.0, None), (None, 0.0)])
def test_a_clip_that_ends_before_it_starts_is_refused(
    start: float | None, end: float | None
) -> None:
    with pytest.raises(MuxFailed, match="clip_end must be after clip_start"):
        _plan(_info(_video()), clip_start=start, clip_end=end)


# --- scaling


def test_max_resolution_below_the_shorter_side_scales_down_and_re_encodes() -> None:
    p = _plan(_info(_video(width=1920, height=1080), _audio()), max_resolution="720")
    (vf,) = _values(p.args, "-vf")
    assert "scale=" in vf and "min(ih,720)" in vf and "min(iw,720)" in vf and "setsar=1" in vf
    assert p.transcodes_video and _values(p.args, "-c:v") == ["libx264"]
    assert _values(p.args, "-c:a") == ["copy"]


def test_max_resolution_compares_the_shorter_side_of_vertical_video() -> None:
    tall = _info(_video(width=1080, height=1920))
    assert _plan(tall, max_resolution="1080").transcodes_video is False
    assert _plan(tall, max_resolution="720").transcodes_video is True


@pytest.mark.parametrize("cap", ["best", "1080", "2160", "1080p"])
def test_max_resolution_at_or_above_the_source_copies(cap: str) -> None:
    p = _plan(_info(_video(width=1920, height=1080)), max_resolution=cap)
    assert "-vf" not in p.args and not p.transcodes_video


def test_unknown_video_size_is_scaled_to_be_sure() -> None:
    unknown = _info(StreamInfo(kind="video", codec="h264"))
    assert "-vf" in _plan(unknown, max_resolution="480").args


def test_scaling_vp9_into_webm_stays_vp9() -> None:
    p = _plan(_info(_video("vp9"), _audio("opus")), format="webm", max_resolution="360")
    assert p.video_codec == "vp9" and _values(p.args, "-c:a") == ["copy"]


# --- refusals and names


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "avi"}, "Unsupported format 'avi'"),
        ({"video_codec": "theora"}, "Unsupported video_codec 'theora'"),
        ({"audio_codec": "flac"}, "Unsupported audio_codec 'flac'"),
        ({"audio_bitrate": "loud"}, "Invalid audio_bitrate"),
        ({"audio_bitrate": "0k"}, "Invalid audio_bitrate"),
        ({"video_quality": 52}, "between 0 and 51"),
        ({"video_quality": -1}, "between 0 and 51"),
        ({"quality_preset": "ultra"}, "Unknown quality_preset 'ultra'"),
        ({"max_resolution": "huge"}, "Invalid max_resolution"),
        ({"format": "webm", "video_codec": "h264"}, "webm format cannot hold h264 video"),
        ({"format": "mp4", "video_codec": "vp9"}, "mp4 format cannot hold vp9 video"),
        ({"format": "mp4", "audio_codec": "opus"}, "mp4 format cannot hold opus audio"),
        ({"format": "mp3", "audio_codec": "aac"}, "mp3 format cannot hold aac audio"),
    ],
)
def test_bad_options_are_refused_with_a_message_for_the_user(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(MuxFailed, match=message):
        _plan(_info(_video(), _audio()), **options)


def test_format_names_are_case_insensitive() -> None:
    assert _plan(_info(_video(), _audio()), format="MKV").output_ext == "mkv"


def test_the_output_may_not_overwrite_an_input() -> None:
    with pytest.raises(MuxFailed, match="overwrite an input"):
        plan([_info(_video())], Path("/in/a"), input_paths=[Path("/in/a.mp4")])
    with pytest.raises(MuxFailed, match="overwrite an input"):
        plan([_info(_video())], Path("/in/a.mkv"), input_paths=[Path("/in/a.mp4")])


def test_probe_results_and_paths_must_pair_up() -> None:
    with pytest.raises(ValueError, match="one ProbeInfo per input"):
        plan([_info(_video())], OUT, input_paths=[])
    with pytest.raises(ValueError, match="one ProbeInfo per input"):
        plan([], OUT, input_paths=[])


def test_paths_that_look_like_options_or_protocols_stay_files() -> None:
    p = plan(
        [_info(_video())],
        Path("-out"),
        input_paths=[
            Path("-i"),
        ][:1],
    )
    assert _values(p.args, "-i") == ["file:-i"] and p.args[-1] == "file:-out.mp4"


@pytest.mark.parametrize(
    ("given", "ext", "written"),
    [
        ("/o/video", "mp4", "/o/video.mp4"),
        ("/o/video.mp4", "mp4", "/o/video.mp4"),
        ("/o/video.MKV", "webm", "/o/video.webm"),
        ("/o/Ep. 1 - Pilot", "mkv", "/o/Ep. 1 - Pilot.mkv"),
        ("/o/song.m4a", "mp3", "/o/song.mp3"),
    ],
)
def test_the_output_suffix_follows_the_format(given: str, ext: str, written: str) -> None:
    assert output_path(Path(given), ext) == Path(written)


def test_the_compatibility_table_covers_every_format() -> None:
    assert set(VIDEO_CODECS) <= set(AUDIO_CODECS)
    for fmt in AUDIO_CODECS:
        _plan(_info(_video(), _audio()), format=fmt)  # every format plans from h264 + aac


# ---------------------------------------------------------------------------------------------
# probe parsing and error messages, on FFmpeg's own words

_MP4_STDERR = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from '/tmp/a.mp4':
  Metadata:
    major_brand     : isom
    title           : Stream #0:9: Audio: fake (not a stream)
  Duration: 01:02:03.50, start: 0.000000, bitrate: 778 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, \
progressive), 1920x1080 [SAR 1:1 DAR 16:9], 4997 kb/s, 25 fps, 25 tbr, 12800 tbn (default)
    Metadata:
      handler_name    : VideoHandler
    Side data:
      displaymatrix: rotation of -90.00 degrees
  Stream #0:1[0x2](eng): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, \
128 kb/s (default)
  Stream #0:2[0x3](eng): Subtitle: mov_text (tx3g / 0x67337874), 0 kb/s
  Stream #0:3[0x4](und): Data: none (tmcd / 0x64636D74)
At least one output file must be specified
"""


def test_probe_output_is_parsed_into_duration_streams_and_container() -> None:
    info = parse_probe(_MP4_STDERR, Path("/tmp/a.mp4"))
    assert info == ProbeInfo(
        duration=3723.5,
        streams=[
            StreamInfo(kind="video", codec="h264", width=1920, height=1080, bitrate_kbps=4997),
            StreamInfo(kind="audio", codec="aac", bitrate_kbps=128),
            StreamInfo(kind="subtitle", codec="mov_text", bitrate_kbps=0),
        ],
        container="mp4",
    )


@pytest.mark.parametrize(
    ("demuxer", "name", "container"),
    [
        ("matroska,webm", "a.webm", "webm"),
        ("matroska,webm", "a.mkv", "mkv"),
        ("matroska,webm", "a.bin", "matroska"),
        ("ogg", "a.opus", "opus"),
        ("mov,mp4,m4a,3gp,3g2,mj2", "a.m4a", "m4a"),
        ("mp3", "a.mp3", "mp3"),
    ],
)
def test_the_container_is_the_files_own_kind_when_the_demuxer_agrees(
    demuxer: str, name: str, container: str
) -> None:
    stderr = f"Input #0, {demuxer}, from '{name}':\n  Duration: N/A, bitrate: N/A\n"
    info = parse_probe(stderr, Path(name))
    assert info is not None and info.container == container and info.duration is None


def test_unopenable_input_parses_to_none_and_its_error_reads_plainly() -> None:
    stderr = (
        "[in#0 @ 0x55e414846040] moov atom not found\n"
        "[in#0 @ 0x55e414845cc0] Error opening input: Invalid data found when processing input\n"
        "Error opening input file /tmp/jobs/x/broken.mp4.\n"
        "Error opening input files: Invalid data found when processing input\n"
    )
    assert parse_probe(stderr, Path("/tmp/jobs/x/broken.mp4")) is None
    message = last_error(stderr.splitlines(), [Path("/tmp/jobs/x/broken.mp4")])
    assert message == "Invalid data found when processing input"


def test_error_lines_lose_addresses_paths_and_file_names() -> None:
    lines = [
        "[vost#0:0 @ 0x1234abcd] Error opening file:/srv/spool/tmp/out.mp4: Permission denied",
        "Conversion failed!",
    ]
    assert last_error(lines, [Path("/srv/spool/tmp/out.mp4")]) == (
        "Error opening the file: Permission denied"
    )
    named = ["media.mp4.mp4: Invalid data found when processing input"]
    assert last_error(named, [Path("/w/media.mp4.mp4")]) == (
        "Invalid data found when processing input"
    )
    assert last_error(["", "Conversion failed!"], []) is None


# --- progress throttling, on a hand-driven clock


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_reported_at_most_each_second_or_each_five_percent_then_100_once() -> None:
    clock, calls = _Clock(), list[float]()
    progress = _Progress(100.0, calls.append, clock)
    for step in range(1, 200):  # 0.5 % of output every 0.1 s
        clock.now = step * 0.1
        progress.at(step * 0.5)
    progress.finish()
    assert calls[-1] == 100.0 and calls.count(100.0) == 1
    assert calls == sorted(calls) and len(calls) < 30
    # Every 10 steps a second has passed: that is the throttle that bites here.
    assert calls[:3] == [5.0, 10.0, 15.0]


def test_fast_progress_is_reported_every_five_percent() -> None:
    clock, calls = _Clock(), list[float]()
    progress = _Progress(100.0, calls.append, clock)
    for step in range(1, 100):
        progress.at(float(step))  # the clock never moves
    progress.finish()
    assert calls == [5.0 * n for n in range(1, 20)] + [100.0]


def test_progress_without_a_known_length_reports_only_the_end() -> None:
    calls = list[float]()
    progress = _Progress(None, calls.append)
    progress.at(10.0)
    progress.finish()
    assert calls == [100.0]


# ---------------------------------------------------------------------------------------------
# real FFmpeg, on media it makes now: few, small and short


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small inputs, made once for this module."""
    d = tmp_path_factory.mktemp("muxer-media")
    return {
        "video": make_video_only(d / "video.mp4"),
        "audio": make_audio_only(d / "audio.m4a"),
        "clip": make_clip(d / "clip.mp4"),
        "opus": make_audio_only(d / "speech.opus", audio_codec="libopus"),
        "wide": make_video_only(d / "wide.mp4", 1.0, width=640, height=360),
        "tall": make_video_only(d / "tall.mp4", 1.0, width=360, height=640),
        "long": make_clip(d / "long.mp4", 30.0),
    }


def _ffmpeg_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "ffmpeg" in c.name()]


def test_probe_reads_codecs_size_and_duration(media: dict[str, Path]) -> None:
    info = probe(media["clip"])
    assert info.container == "mp4"
    assert info.duration is not None and abs(info.duration - 2.0) < 0.1
    video, audio = info.streams
    assert (video.kind, video.codec, video.width, video.height) == ("video", "h264", 320, 240)
    assert (audio.kind, audio.codec) == ("audio", "aac")
    assert [(s.kind, s.codec) for s in probe(media["opus"]).streams] == [("audio", "opus")]


async def test_merging_video_and_audio_into_mp4_copies_both(
    media: dict[str, Path], tmp_path: Path
) -> None:
    result = await mux([media["video"], media["audio"]], tmp_path / "merged")
    assert result.path == str(tmp_path / "merged.mp4")
    assert (result.video_codec, result.audio_codec) == ("h264", "aac")
    assert media_streams(Path(result.path)) == ["video", "audio"]
    assert abs(media_duration(Path(result.path)) - 2.0) < 0.3
    assert result.size == Path(result.path).stat().st_size > 0 and result.seconds > 0


async def test_mp4_remuxes_to_mkv_without_re_encoding(
    media: dict[str, Path], tmp_path: Path
) -> None:
    result = await mux([media["clip"]], tmp_path / "clip", format="mkv")
    assert Path(result.path).suffix == ".mkv"
    assert (result.video_codec, result.audio_codec) == ("h264", "aac")
    assert probe(Path(result.path)).container == "mkv"


async def test_webm_from_h264_and_aac_is_vp9_and_opus(
    media: dict[str, Path], tmp_path: Path
) -> None:
    result = await mux([media["clip"]], tmp_path / "clip", format="webm", clip_end=1.0)
    assert (result.video_codec, result.audio_codec) == ("vp9", "opus")
    assert result.duration is not None and abs(result.duration - 1.0) < 0.3


async def test_opus_audio_into_mp4_falls_back_to_aac(
    media: dict[str, Path], tmp_path: Path
) -> None:
    result = await mux([media["video"], media["opus"]], tmp_path / "out", audio_codec="copy")
    assert (result.video_codec, result.audio_codec) == ("h264", "aac")


@pytest.mark.parametrize(("fmt", "ext", "codec"), [(None, ".m4a", "aac"), ("mp3", ".mp3", "mp3")])
async def test_audio_only_extracts_audio(
    media: dict[str, Path], tmp_path: Path, fmt: str | None, ext: str, codec: str
) -> None:
    result = await mux([media["clip"]], tmp_path / "song", format=fmt, audio_only=True)
    assert Path(result.path).suffix == ext
    assert (result.video_codec, result.audio_codec) == (None, codec)
    assert media_streams(Path(result.path)) == ["audio"]


async def test_a_clip_has_the_asked_duration(media: dict[str, Path], tmp_path: Path) -> None:
    result = await mux([media["clip"]], tmp_path / "cut", clip_start=0.5, clip_end=1.5)
    assert abs(media_duration(Path(result.path)) - 1.0) < 0.3
    assert media_streams(Path(result.path)) == ["video", "audio"]


@pytest.mark.parametrize(("source", "size"), [("wide", (426, 240)), ("tall", (240, 426))])
async def test_max_resolution_scales_the_shorter_side(
    media: dict[str, Path], tmp_path: Path, source: str, size: tuple[int, int]
) -> None:
    result = await mux([media[source]], tmp_path / "small", max_resolution="240")
    assert video_size(Path(result.path)) == size


async def test_progress_rises_and_ends_at_100_once(media: dict[str, Path], tmp_path: Path) -> None:
    calls: list[tuple[float, float]] = []
    await mux(
        [media["long"]],
        tmp_path / "p",
        video_codec="h264",
        quality_preset="lowest",
        clip_end=10.0,
        on_progress=lambda pct: calls.append((time.monotonic(), pct)),
    )
    percents = [pct for _, pct in calls]
    assert percents[-1] == 100.0 and percents.count(100.0) == 1
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    # The closing 100 is exempt: it is said once FFmpeg has exited, however soon that is.
    for (t0, p0), (t1, p1) in itertools.pairwise(calls[:-1]):
        assert t1 - t0 >= 0.99 or p1 - p0 >= 5.0


async def test_a_corrupt_input_fails_with_a_readable_message(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"not really a movie" * 100)
    with pytest.raises(Unreadable) as failed:
        await mux([broken], tmp_path / "out")
    message = str(failed.value)
    assert message.startswith("FFmpeg cannot read the media: ")
    assert "Traceback" not in message and str(tmp_path) not in message
    assert "broken.mp4" not in message  # the node's own file names mean nothing to a user
    assert list(tmp_path.iterdir()) == [broken]


async def test_an_ffmpeg_failure_names_the_reason(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MuxFailed, match=r"^Muxing failed: .*No such file or directory"):
        await mux([media["clip"]], tmp_path / "missing-folder" / "out")


async def test_cancel_stops_ffmpeg_at_once_and_leaves_no_output(
    media: dict[str, Path], tmp_path: Path
) -> None:
    cancel = asyncio.Event()
    set_at: list[float] = []

    def on_progress(_: float) -> None:
        if not cancel.is_set():
            set_at.append(time.monotonic())
            cancel.set()

    # x265 takes several seconds over 30 s of video: long enough to be caught mid-way.
    with pytest.raises(MuxCancelled):
        await mux(
            [media["long"]],
            tmp_path / "out",
            video_codec="h265",
            on_progress=on_progress,
            cancel=cancel,
        )
    assert set_at and time.monotonic() - set_at[0] < 1.5
    assert list(tmp_path.iterdir()) == [] and _ffmpeg_children() == []


async def test_cancelling_the_task_also_stops_ffmpeg(
    media: dict[str, Path], tmp_path: Path
) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(
        mux(
            [media["long"]],
            tmp_path / "out",
            video_codec="h265",
            on_progress=lambda _: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == [] and _ffmpeg_children() == []


async def test_a_mux_past_its_timeout_fails_and_leaves_no_output(
    media: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(MuxFailed, match=r"took longer than 0\.5 s"):
        await mux([media["long"]], tmp_path / "out", video_codec="h265", timeout=0.5)
    assert list(tmp_path.iterdir()) == [] and _ffmpeg_children() == []


async def test_an_already_set_cancel_runs_nothing(media: dict[str, Path], tmp_path: Path) -> None:
    cancel = asyncio.Event()
    cancel.set()
    with pytest.raises(MuxCancelled):
        await mux([media["clip"]], tmp_path / "out", cancel=cancel)
    assert list(tmp_path.iterdir()) == []
