"""The viewer domain's pure rules: a media file's bitrate, and health from bandwidth against it."""

from __future__ import annotations

import pytest

from spool.domain import viewer


@pytest.mark.parametrize(
    ("size", "duration", "expected"),
    [
        (1_000_000, 8.0, 1_000_000),
        (3, 2.0, 12),
        (0, 10.0, 0),
        (None, 10.0, 0),
        (1_000, None, 0),
        (1_000, 0.0, 0),
        (1_000, -1.0, 0),
    ],
)
def test_bitrate_is_bits_per_second_and_zero_when_unknown(
    size: int | None, duration: float | None, expected: int
) -> None:
    assert viewer.bitrate(size, duration) == expected


def test_a_viewer_moving_media_as_fast_as_it_plays_is_very_good() -> None:
    assert viewer.health("GENERIC_HLS_VIEWER", 800_000, 0, 100_000, True) == (100, "Very Good")


def test_half_the_bitrate_is_fair_and_the_score_never_passes_100() -> None:
    assert viewer.health("GENERIC_HLS_VIEWER", 800_000, 0, 50_000, True) == (50, "Fair")
    assert viewer.health("GENERIC_HLS_VIEWER", 800_000, 0, 10_000_000, True)[0] == 100


def test_a_publisher_is_judged_on_what_it_sends_in() -> None:
    assert viewer.health("RTMP_PUSH", 800_000, 100_000, 0, True) == (100, "Very Good")
    assert viewer.health("RTMP_PUSH", 800_000, 0, 100_000, True) == (0, "Very Bad")


def test_no_bitrate_or_no_measurement_is_no_data() -> None:
    assert viewer.health("GENERIC_HLS_VIEWER", 0, 0, 100_000, True) == (0, viewer.NO_DATA)
    assert viewer.health("GENERIC_HLS_VIEWER", 800_000, 0, 100_000, False) == (0, viewer.NO_DATA)


@pytest.mark.parametrize(
    ("score", "word"),
    [(100, "Very Good"), (90, "Very Good"), (89, "Good"), (75, "Good"), (74, "Fair"),
     (50, "Fair"), (49, "Bad"), (25, "Bad"), (24, "Very Bad"), (0, "Very Bad")],
)  # fmt: skip
def test_grades_change_at_90_75_50_and_25(score: int, word: str) -> None:
    assert viewer.grade(score) == word
