"""The viewer domain's pure rules: a media file's bitrate, health from bandwidth against it,
and the decisions on a viewer's events."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
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


def _opened(**counters: int) -> viewer.ViewerState:
    return viewer.ViewerState(
        viewer_id="v-1", harness_type="GENERIC_HLS_VIEWER", state="PLAYING", started_at=0,
        **counters,
    )  # fmt: skip


def test_a_viewer_opens_once_and_only_with_fields_it_can_record() -> None:
    connected = viewer.ViewerConnected(
        viewer_id="v-1", harness_type="GENERIC_HLS_VIEWER", state="PLAYING", started_at=0
    )
    assert viewer.connect(None, connected) == [connected]
    with pytest.raises(viewer.ViewerExists):
        viewer.connect(_opened(), connected)
    with pytest.raises(viewer.InvalidViewer, match="harnessType"):
        viewer.connect(None, msgspec.structs.replace(connected, harness_type="TELEVISION"))


def test_a_goodbye_keeps_the_last_totals_and_ends_the_viewer_for_good() -> None:
    [bye] = viewer.disconnect(_opened(in_total_bytes=5, out_total_bytes=9), "v-1")
    assert bye == viewer.ViewerDisconnected(
        viewer_id="v-1", reason="closed", in_total_bytes=5, out_total_bytes=9
    )
    ended = viewer.evolve(_opened(), bye, datetime.now(UTC), 2)
    with pytest.raises(viewer.ViewerClosed):
        viewer.change_state(ended, "v-1", "PAUSED")
    with pytest.raises(viewer.ViewerNotFound):
        viewer.disconnect(None, "v-2")


def test_stats_never_run_totals_backwards_nor_below_zero() -> None:
    counters = {"in_bandwidth": 0, "out_bandwidth": 0, "in_total_bytes": 4, "out_total_bytes": 4}
    assert len(viewer.report_stats(_opened(in_total_bytes=4), "v-1", **counters)) == 1
    with pytest.raises(viewer.InvalidViewer, match="never go down"):
        viewer.report_stats(_opened(in_total_bytes=5), "v-1", **counters)
    with pytest.raises(viewer.InvalidViewer, match="inBandwidth"):
        viewer.report_stats(_opened(), "v-1", **{**counters, "in_bandwidth": -1})
    with pytest.raises(viewer.InvalidViewer, match="state must be"):
        viewer.change_state(_opened(), "v-1", "paused")
