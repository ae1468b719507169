"""Where the FFmpeg binary lives: the machine's own, else the one `imageio-ffmpeg` ships."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio_ffmpeg


def ffmpeg_exe() -> str:
    """The path of an `ffmpeg` binary: the system one on PATH if present, else imageio-ffmpeg's."""
    return shutil.which("ffmpeg") or str(imageio_ffmpeg.get_ffmpeg_exe())


def file_url(path: Path) -> str:
    """How FFmpeg is given a local file: the file: protocol stops names like "-x.mp4" reading as
    options and "a:b.mp4" as protocols."""
    return f"file:{path}"
