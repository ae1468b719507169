"""Where the FFmpeg binary lives: the machine's own, else the one `imageio-ffmpeg` ships."""

from __future__ import annotations

import shutil

import imageio_ffmpeg


def ffmpeg_exe() -> str:
    """The path of an `ffmpeg` binary: the system one on PATH if present, else imageio-ffmpeg's."""
    return shutil.which("ffmpeg") or str(imageio_ffmpeg.get_ffmpeg_exe())
