"""The pure comparison behind `verify` (domain/verification.py): what a muxed file is held to.

Each case is a job's options, what the mux read of the source and of its output, and the
verdict a user would see: a pass, a pass with a warning, or the failure's reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from spool.domain.job_options import AskedOptions, InvalidOption, resolve
from spool.domain.verification import (
    OutputFacts,
    SourceFacts,
    VerificationFailed,
    duration_tolerance,
    expected_duration,
    judge,
)

SOURCE = SourceFacts(
    duration=10.0,
    has_video=True,
    has_audio=True,
    video_codecs=frozenset({"h264"}),
    audio_codecs=frozenset({"aac"}),
    short_side=1080,
)
OUTPUT = OutputFacts(
    duration=10.02,
    container="mp4",
    video_codec="h264",
    audio_codec="aac",
    width=1920,
    height=1080,
    video_streams=1,
    audio_streams=1,
)


def _source(**changes: Any) -> SourceFacts:
    return SourceFacts(**{**{f: getattr(SOURCE, f) for f in SOURCE.__struct_fields__}, **changes})


def _output(**changes: Any) -> OutputFacts:
    return OutputFacts(**{**{f: getattr(OUTPUT, f) for f in OUTPUT.__struct_fields__}, **changes})


def _failure(options: dict[str, Any], source: SourceFacts, output: OutputFacts) -> str:
    with pytest.raises(VerificationFailed) as failed:
        judge(resolve(AskedOptions(**options)), source, output, "fast")
    return str(failed.value)


def test_an_output_as_asked_passes_and_says_what_it_was_held_to() -> None:
    verdict = judge(resolve(AskedOptions()), SOURCE, OUTPUT, "fast")
    assert (verdict.mode, verdict.expected_duration, verdict.expected_quality) == (
        "fast",
        10.0,
        1080,
    )
    assert verdict.warning is None


def test_an_output_shorter_than_its_source_fails_naming_both_lengths() -> None:
    reason = _failure({}, SOURCE, _output(duration=3.1))
    assert reason == "Verification failed: the output lasts 3.1 s, the source 10.0 s"


def test_an_output_longer_than_its_source_fails_too() -> None:
    assert "lasts 12.5 s" in _failure({}, SOURCE, _output(duration=12.5))


def test_the_length_is_held_to_the_clip_when_one_is_asked() -> None:
    options = {"clip_start": "2", "clip_end": "5"}
    assert judge(resolve(AskedOptions(**options)), SOURCE, _output(duration=3.0), "fast")
    reason = _failure(options, SOURCE, _output(duration=10.0))
    assert reason == "Verification failed: the output lasts 10.0 s, the clip asked for 3.0 s"


def test_a_clip_past_the_end_of_the_source_is_held_to_what_the_source_has() -> None:
    options = resolve(AskedOptions(clip_start="8", clip_end="60"))
    assert expected_duration(options, SOURCE) == 2.0


def test_the_tolerance_is_a_second_or_a_hundredth_of_the_length() -> None:
    assert duration_tolerance(10.0) == 1.0
    assert duration_tolerance(3600.0) == 36.0
    assert judge(resolve(AskedOptions()), SOURCE, _output(duration=10.9), "fast")


def test_a_source_that_declares_no_length_is_not_held_to_one() -> None:
    verdict = judge(resolve(AskedOptions()), _source(duration=None), _output(duration=3.0), "fast")
    assert verdict.expected_duration is None


def test_an_output_without_a_readable_length_fails() -> None:
    assert "reads no duration" in _failure({}, SOURCE, _output(duration=None))


def test_the_container_must_be_the_format_asked_for() -> None:
    reason = _failure({"format": "mkv"}, SOURCE, OUTPUT)
    assert reason == "Verification failed: the output is mp4, not mkv"


def test_an_asked_codec_must_be_the_one_written_in_the_job_apis_words() -> None:
    h265 = _output(video_codec="hevc")
    assert judge(resolve(AskedOptions(video_codec="h265")), SOURCE, h265, "fast")
    reason = _failure({"video_codec": "h265"}, SOURCE, OUTPUT)
    assert reason == "Verification failed: the video is h264, not h265"
    assert "the audio is aac, not mp3" in _failure({"audio_codec": "mp3"}, SOURCE, OUTPUT)


def test_copy_keeps_the_source_codec_or_the_containers_default() -> None:
    vp9_source = _source(video_codecs=frozenset({"vp9"}), audio_codecs=frozenset({"opus"}))
    # MP4 cannot hold the source's VP9 and Opus as Spool plays safe: h264 and aac instead.
    assert judge(resolve(AskedOptions()), vp9_source, OUTPUT, "fast")
    reason = _failure({}, SOURCE, _output(video_codec="vp9"))
    assert reason == "Verification failed: the video is vp9, not h264 (copy)"


def test_the_streams_are_the_ones_the_source_had_and_the_request_kept() -> None:
    assert "no video stream" in _failure({}, SOURCE, _output(video_codec=None, video_streams=0))
    assert "no audio stream" in _failure({}, SOURCE, _output(audio_codec=None, audio_streams=0))
    audio = _output(container="m4a", video_codec=None, width=None, height=None, video_streams=0)
    assert judge(resolve(AskedOptions(audio_only=True)), SOURCE, audio, "fast")
    m4a_with_video = _output(container="m4a")
    assert "audio only was asked" in _failure({"audio_only": True}, SOURCE, m4a_with_video)
    silent = _source(has_audio=False, audio_codecs=frozenset())
    assert judge(
        resolve(AskedOptions()), silent, _output(audio_codec=None, audio_streams=0), "fast"
    )


def test_a_lower_resolution_than_asked_that_the_source_did_not_offer_is_a_warning() -> None:
    sd = _source(short_side=480)
    verdict = judge(
        resolve(AskedOptions(max_resolution="1080")), sd, _output(width=854, height=480), "fast"
    )
    assert verdict.warning == (
        "480p delivered, below the 1080p asked for: the source offers no more than 480p"
    )
    assert verdict.expected_quality == 480


def test_best_asks_for_what_the_source_offers_and_warns_of_nothing() -> None:
    sd = _source(short_side=480)
    verdict = judge(resolve(AskedOptions()), sd, _output(width=854, height=480), "fast")
    assert verdict.warning is None


def test_a_resolution_the_source_claimed_but_did_not_send_fails() -> None:
    claimed = _source(short_side=480, offered_short_side=1080)
    reason = _failure({"max_resolution": "1080"}, claimed, _output(width=854, height=480))
    assert reason == "Verification failed: the source offered 1080p but sent 480p"


def test_an_output_smaller_than_its_source_within_the_cap_fails() -> None:
    reason = _failure({"max_resolution": "720"}, SOURCE, _output(width=854, height=480))
    assert reason == "Verification failed: the output is 480p, the source 720p"


def test_a_capped_output_at_the_cap_passes_and_vertical_video_counts_its_shorter_side() -> None:
    capped = judge(
        resolve(AskedOptions(max_resolution="720")), SOURCE, _output(width=1280, height=720), "fast"
    )
    assert (capped.expected_quality, capped.warning) == (720, None)
    vertical = _output(width=720, height=1280)
    assert judge(resolve(AskedOptions(max_resolution="720")), SOURCE, vertical, "fast")


def test_verify_is_fast_unless_asked_and_refuses_other_words() -> None:
    assert resolve(AskedOptions()).verify == "fast"
    assert resolve(AskedOptions(verify="full")).verify == "full"
    assert resolve(AskedOptions(verify="off")).verify == "off"
    with pytest.raises(InvalidOption, match=r"^Invalid verify \(expected fast, full or off\)$"):
        resolve(AskedOptions(verify="thorough"))
