"""EBU R128 loudness normalisation: FFmpeg's two-pass `loudnorm`, as pure planning and parsing.

The first pass measures the audio the mux will write (`print_format=json`); `report` reads that
measurement from FFmpeg's output. The second pass is part of the mux: `second_pass` is its audio
filter, the measured values handed back with `linear=true`, so the whole programme is moved by one
gain (its dynamics kept) wherever the true-peak ceiling allows; where it does not, FFmpeg falls
back to its dynamic mode, which still reaches the target. The file written is measured again, and
a job records both figures (`Loudness`). adapters/loudness.py runs the passes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Final

import msgspec

TARGET_RANGE: Final = (-40.0, -5.0)
"""The integrated loudness (LUFS) a job may ask for: quieter than -40 is no programme level,
louder than -5 is FFmpeg's limit."""
AUDIO_TARGET: Final = -16.0
"""The default for audio-only jobs: the level podcasts and music services play at."""
VIDEO_TARGET: Final = -23.0
"""The default otherwise: EBU R128's broadcast level."""
TRUE_PEAK: Final = -1.0
"""The true-peak ceiling (dBTP) the second pass keeps below: EBU R128's."""
LOUDNESS_RANGE: Final = 7.0
"""The loudness range (LU) asked for; a wider source keeps its own (see `second_pass`)."""
SAMPLE_RATE: Final = 48_000
"""What normalised audio is resampled to: `loudnorm` may work at 192 kHz, and every codec a job
can ask for (Opus included) takes 48 kHz."""


class Measurement(msgspec.Struct, frozen=True, kw_only=True):
    """What one `loudnorm` pass measured of its input."""

    integrated: float
    """Integrated loudness, LUFS."""
    true_peak: float
    """dBTP."""
    lra: float
    """Loudness range, LU."""
    threshold: float
    """The relative gate's threshold, LUFS."""
    offset: float
    """The gain (LU) `loudnorm` says a second pass should add after its own."""


class Loudness(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A normalised job's loudness: the target and the integrated loudness (LUFS) measured
    before (the source's audio over the job's clip) and after (the file written). None where
    there was nothing to measure: no audio, or silence."""

    target: float
    before: float | None = None
    after: float | None = None


def default_target(audio_only: bool) -> float:
    """The target a job gets when it names none."""
    return AUDIO_TARGET if audio_only else VIDEO_TARGET


def measuring_filter(target: float) -> str:
    """The first pass's filter: measure only (its output is thrown away)."""
    return f"loudnorm=I={target:g}:TP={TRUE_PEAK:g}:LRA={LOUDNESS_RANGE:g}:print_format=json"


def report(lines: Iterable[str]) -> Measurement | None:
    """The last `loudnorm` JSON report among FFmpeg's output lines; None when there is none, or
    when it measured silence (FFmpeg says `-inf`, which no second pass can take)."""
    text = "\n".join(lines)
    start = text.rfind("{")
    end = text.find("}", start)
    if start < 0 or end < 0:
        return None
    try:
        raw = json.loads(text[start : end + 1])
        values = {
            name: float(raw[key])
            for name, key in (
                ("integrated", "input_i"),
                ("true_peak", "input_tp"),
                ("lra", "input_lra"),
                ("threshold", "input_thresh"),
                ("offset", "target_offset"),
            )
        }
    except (ValueError, KeyError, TypeError):
        return None
    if not all(math.isfinite(v) for v in values.values()):
        return None
    return Measurement(**values)


def second_pass(target: float, measured: Measurement) -> str:
    """The audio filter that brings audio `measured` to `target`: `loudnorm` given the first
    pass's figures with `linear=true`, then a resample to `SAMPLE_RATE`.

    `loudnorm` keeps its linear mode only when the range asked is at least the measured one, so
    a source wider than `LOUDNESS_RANGE` is asked for its own range (at most FFmpeg's 50 LU).
    """
    lra = min(50.0, max(LOUDNESS_RANGE, math.ceil(measured.lra * 10) / 10))
    # FFmpeg bounds each measured_* option; a figure outside them is clamped rather than refused.
    parts = {
        "I": f"{target:g}",
        "TP": f"{TRUE_PEAK:g}",
        "LRA": f"{lra:g}",
        "measured_I": f"{_clamped(measured.integrated, -99.0, 0.0):.2f}",
        "measured_TP": f"{_clamped(measured.true_peak, -99.0, 99.0):.2f}",
        "measured_LRA": f"{_clamped(measured.lra, 0.0, 99.0):.2f}",
        "measured_thresh": f"{_clamped(measured.threshold, -99.0, 0.0):.2f}",
        "offset": f"{_clamped(measured.offset, -99.0, 99.0):.2f}",
        "linear": "true",
    }
    options = ":".join(f"{name}={value}" for name, value in parts.items())
    return f"loudnorm={options},aresample={SAMPLE_RATE}"


def _clamped(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))
