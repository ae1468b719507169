"""The download adapter alone: CPU per download of one small clip over loopback.

`adapters.downloader.download` is called `--downloads` times (after one warm-up call) on the
2-second FFmpeg clip that `bench.pipeline` uses, served by the suite's loopback media server,
from `--threads` threads at once (a node runs its downloads in threads: `download=2`). Reported:
process CPU ms per download (user + system, so the media server's thread counts too, the same
on both sides of a comparison) and wall ms per download. The fetch itself is a few hundred
kilobytes from loopback, so what this measures is mostly yt-dlp's own set-up per download.

    python -m bench.downloads                       # 40 downloads, 1 thread
    python -m bench.downloads --downloads 60 --threads 2

To compare with an older tree, run this file from the newer one with the older tree's packages
first on the path, e.g. `PYTHONPATH=/tmp/old-tree:$PWD python -m bench.downloads`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spool.adapters import downloader
from spool.adapters.ssrf import UrlGuard
from tests.fixtures.media import MediaServer, make_clip


def _one(url: str, guard: UrlGuard, dest: Path) -> None:
    result = downloader.download(url, dest, guard=guard)
    assert result.total_bytes > 0
    shutil.rmtree(dest, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--downloads", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spool-bench-dl-") as tmp:
        root = Path(tmp)
        make_clip(root / "clip.mp4", 2.0)
        media = MediaServer(root).start()
        try:
            url = media.url("clip.mp4")
            guard = UrlGuard(["127.0.0.1/32"])
            _one(url, guard, root / "warm-up")
            cpu, wall = time.process_time(), time.monotonic()
            with ThreadPoolExecutor(args.threads) as pool:
                list(
                    pool.map(
                        lambda n: _one(url, guard, root / f"d{n}"),
                        range(args.downloads),
                    )
                )
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            media.stop()
    n = args.downloads
    print(
        f"{n} downloads, {args.threads} thread(s), pid {os.getpid()}: "
        f"CPU {1000 * cpu / n:.1f} ms per download, wall {1000 * wall / n:.1f} ms per download"
    )


if __name__ == "__main__":
    main()
