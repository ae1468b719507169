"""What verifying a muxed output costs (`verify: fast` and `full`), per minute of media.

For each length asked (`--minutes`, default 1 and 5), FFmpeg makes a 720p H.264/AAC clip of the
test pattern and tone (`tests/fixtures/media.py` `make_clip`), muxes it as a job with default
options would (`adapters.muxer.mux`, a stream copy into MP4), and then times, `--repeat` times
each (the median is reported):

- `fast`: `adapters.media_verify.verify` with `verify: fast`, plus the probes it reads (the
  inputs' and the output's `ffmpeg -i`). The mux makes those probes whatever `verify` says, so
  fast's own cost is the comparison alone, reported apart as `judge`;
- `full`: `verify` with `verify: full`: the same, plus decoding the whole output.

Wall seconds, and CPU seconds of this process and its FFmpeg children (user + system), each
divided by the clip's minutes. The numbers go in BENCHMARKS.md, never in code or docs.

    python -m bench.verify_cost                      # 1 and 5 minute clips, 3 runs each
    python -m bench.verify_cost --minutes 1 10 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from spool.adapters import media_verify, muxer
from spool.domain.job_options import AskedOptions, resolve
from tests.fixtures.media import make_clip


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _timed(work: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    """The median wall and CPU seconds of `repeat` runs of `work`."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeat):
        cpu, wall = _cpu(), time.monotonic()
        await work()
        walls.append(time.monotonic() - wall)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


async def _measure(root: Path, minutes: float, repeat: int) -> dict[str, tuple[float, float]]:
    source = make_clip(root / f"source-{minutes:g}.mp4", minutes * 60, width=1280, height=720)
    result = await muxer.mux([source], root / f"output-{minutes:g}", format="mp4")
    inputs = [source]
    output = Path(result.path)
    fast, full = resolve(AskedOptions(verify="fast")), resolve(AskedOptions(verify="full"))

    async def probed() -> muxer.MuxResult:
        infos = [await asyncio.to_thread(muxer.probe, p) for p in inputs]
        written = await asyncio.to_thread(muxer.probe, output)
        return muxer.MuxResult(
            path=str(output),
            size=result.size,
            duration=written.duration,
            video_codec=result.video_codec,
            audio_codec=result.audio_codec,
            seconds=0.0,
            inputs=infos,
            written=written,
        )

    async def judge() -> object:
        return await media_verify.verify(fast, result, None)

    async def verify_fast() -> object:
        return await media_verify.verify(fast, await probed(), None)

    async def verify_full() -> object:
        return await media_verify.verify(full, await probed(), None)

    await verify_full()  # warm-up: the binary and the file in the page cache
    return {
        "judge": await _timed(judge, repeat),
        "fast": await _timed(verify_fast, repeat),
        "full": await _timed(verify_full, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("minutes  mode   wall s/min   CPU s/min")
    with tempfile.TemporaryDirectory(prefix="spool-bench-verify-") as tmp:
        for minutes in args.minutes:
            costs = asyncio.run(_measure(Path(tmp), minutes, args.repeat))
            for mode, (wall, cpu) in costs.items():
                print(f"{minutes:7g}  {mode:5}  {wall / minutes:11.4f}  {cpu / minutes:10.4f}")


if __name__ == "__main__":
    main()
