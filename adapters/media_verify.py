"""FFmpeg's side of verifying a muxed file: the facts `domain.verification.judge` compares.

`fast` costs nothing new: the mux already read its inputs and the file it wrote (`ffmpeg -i`,
adapters/muxer.py `probe`; there is no ffprobe in imageio-ffmpeg), and `facts` turns those reads
into the domain's terms. `full` also decodes the whole file (`ffmpeg -v error -i out -f null -`):
any line FFmpeg prints at error level fails it, since FFmpeg finishes such a decode with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

from spool.adapters import process_groups
from spool.adapters.ffmpeg import ffmpeg_exe
from spool.adapters.muxer import MuxCancelled, MuxResult, ProbeInfo, last_error
from spool.domain.job_options import JobOptions
from spool.domain.verification import (
    OutputFacts,
    SourceFacts,
    Verification,
    VerificationFailed,
    judge,
)

_ERROR_LINES = 30
"""Of a broken file's decode errors, how many are kept to pick the reason from."""


def _short_side(info: ProbeInfo) -> int | None:
    video = next((s for s in info.streams if s.kind == "video" and s.width and s.height), None)
    if video is None or video.width is None or video.height is None:
        return None
    return min(video.width, video.height)


def source_facts(inputs: list[ProbeInfo], offered_short_side: int | None) -> SourceFacts:
    """The downloaded files as the mux read them, and the shorter side the source claimed."""
    durations = [i.duration for i in inputs if i.duration is not None]
    sides = [side for i in inputs if (side := _short_side(i)) is not None]
    streams = [s for i in inputs for s in i.streams]
    return SourceFacts(
        duration=max(durations) if durations else None,
        has_video=any(s.kind == "video" for s in streams),
        has_audio=any(s.kind == "audio" for s in streams),
        video_codecs=frozenset(s.codec for s in streams if s.kind == "video"),
        audio_codecs=frozenset(s.codec for s in streams if s.kind == "audio"),
        short_side=max(sides) if sides else None,
        offered_short_side=offered_short_side,
    )


def output_facts(written: ProbeInfo) -> OutputFacts:
    """The file the mux wrote, as FFmpeg read it back."""
    video = [s for s in written.streams if s.kind == "video"]
    audio = [s for s in written.streams if s.kind == "audio"]
    return OutputFacts(
        duration=written.duration,
        container=written.container,
        video_codec=video[0].codec if video else None,
        audio_codec=audio[0].codec if audio else None,
        width=video[0].width if video else None,
        height=video[0].height if video else None,
        video_streams=len(video),
        audio_streams=len(audio),
    )


async def verify(
    options: JobOptions,
    result: MuxResult,
    offered_short_side: int | None,
    *,
    cancel: asyncio.Event | None = None,
    on_decoding: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> Verification | None:
    """Hold a finished mux to the job's options, as its `verify` mode asks; None for `off`.

    Raises:
        VerificationFailed: the first mismatch, or (`full`) the first decode error.
        MuxCancelled: `cancel` was set during the decode.
    """
    mode = options.verify
    if mode not in ("fast", "full") or result.written is None:
        return None
    verdict = judge(
        options,
        source_facts(result.inputs, offered_short_side),
        output_facts(result.written),
        "full" if mode == "full" else "fast",
    )
    if mode == "full":
        error = await decode_error(
            Path(result.path), cancel=cancel, on_progress=on_decoding, timeout=timeout
        )
        if error is not None:
            raise VerificationFailed(f"the output does not decode: {error}", blame="source")
    return verdict


async def decode_error(
    path: Path,
    *,
    cancel: asyncio.Event | None = None,
    on_progress: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> str | None:
    """Decode every stream of `path` to nothing; the first error FFmpeg reports, else None.

    `on_progress` is called at each of FFmpeg's progress reports (about every half second), so
    a caller watching for a stalled stage sees the decode move.
    """
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        *("-hide_banner", "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats"),
        *("-i", f"file:{path}", "-f", "null", "-"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, as the mux's (adapters/muxer.py `_run`): a stop reaches it
        # through us, never half-way on its own.
        start_new_session=True,
    )
    process_groups.adopt(proc.pid)
    errors: deque[str] = deque(maxlen=_ERROR_LINES)
    first: list[str] = []
    run = asyncio.ensure_future(_drain(proc, errors, first, on_progress))
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    finished = False
    try:
        waiting = {run} if cancelled is None else {run, cancelled}
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if run not in done:
            if cancelled is not None and cancelled in done:
                raise MuxCancelled("Verification was cancelled")
            return f"decoding took longer than {timeout:g} s and was stopped"
        code = run.result()
        finished = True
    finally:
        if cancelled is not None:
            cancelled.cancel()
        if not finished and proc.returncode is None:
            process_groups.kill(proc.pid)
        process_groups.release(proc.pid)
        if not finished:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(run)
                await proc.wait()
    # The first error is the cause; those after it are mostly its echoes.
    detail = last_error(first, [path]) if first else None
    if detail is None and errors:
        detail = last_error(errors, [path])
    if detail is None and code != 0:
        detail = f"FFmpeg exited with status {code}"
    return detail


async def _drain(
    proc: asyncio.subprocess.Process,
    errors: deque[str],
    first: list[str],
    on_progress: Callable[[], None] | None,
) -> int:
    assert proc.stdout is not None and proc.stderr is not None

    async def read_progress() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            if raw.startswith(b"progress=") and on_progress is not None:
                on_progress()

    async def read_errors() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line and not first:
                first.append(line)
            errors.append(line)

    await asyncio.gather(read_progress(), read_errors())
    return await proc.wait()
