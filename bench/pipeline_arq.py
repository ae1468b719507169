"""The baseline of `bench/pipeline.py`: Spool's three stages as plain arq functions, no events.

The same adapter calls the Spool stages make (`adapters.downloader.download` in a thread,
`adapters.muxer.mux`, `S3Storage.put_file` through `storage_from_url`) with the same arguments
a default job gets, chained the way Spool chains them: download comes from a shared queue, then
the function itself enqueues mux on its own node's queue, and mux enqueues upload there. The
process is shaped like a Spool node (`reactors/worker/`): one arq `Worker` on the download queue
with `max_jobs = download`, one on the node queue with `max_jobs = mux + upload`, a semaphore per
stage, the same arq options (poll delay 0.2 s, results kept, deterministic job ids). What is
missing is everything event-sourced: no PostgreSQL, no events, no projections, no heartbeat,
no dispatcher reading a log.

When an upload finishes the worker pushes one JSON line of timings onto the Redis list
`bench:arq:done` (wall-clock submit / download start / finish, and the three stage durations
measured as Spool measures them); `bench/pipeline.py` reads it.

    python -m bench.pipeline_arq --node-id n1 --redis-url redis://127.0.0.1:6379/15 \\
        --storage-url 's3://bucket/media?endpoint=http://127.0.0.1:PORT' --data-dir /tmp/x
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, func

from bench.harness import wait_for
from spool.adapters import downloader, muxer
from spool.adapters.queue import connect
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage, object_key, storage_from_url
from tests.fixtures.processes import start_module

DOWNLOAD_QUEUE = "bench:arq:queue:download"
DONE_LIST = "bench:arq:done"
READY_PREFIX = "bench:arq:ready:"
_EXPIRES = 7 * 24 * 3600

log = logging.getLogger("bench.arq")


def node_queue(node_id: str) -> str:
    return f"bench:arq:queue:node:{node_id}"


class BaselineNode:
    """What the arq functions share in one worker process."""

    def __init__(
        self,
        *,
        node_id: str,
        redis: ArqRedis,
        storage: ObjectStorage,
        data_dir: Path,
        allowlist: tuple[str, ...],
        concurrency: dict[str, int],
    ) -> None:
        self.node_id = node_id
        self.redis = redis
        self.storage = storage
        self.workroot = data_dir / "work"
        self.guard = UrlGuard(allowlist)
        self.concurrency = concurrency
        self.slots = {stage: asyncio.Semaphore(n) for stage, n in concurrency.items()}
        self.progress: dict[str, Any] = {}  # latest progress per job, as a plain worker keeps it

    def workers(self) -> list[Worker]:
        common: dict[str, Any] = {
            "redis_pool": self.redis,
            "handle_signals": False,
            "ctx": {"node": self},
            "job_timeout": 6 * 3600,
            "keep_result": 7 * 24 * 3600,
            "poll_delay": 0.2,
            "max_tries": 1000,
        }
        c = self.concurrency
        return [
            Worker(
                [func(download, name="download")],
                queue_name=DOWNLOAD_QUEUE,
                max_jobs=c["download"],
                **common,
            ),
            Worker(
                [func(mux, name="mux"), func(upload, name="upload")],
                queue_name=node_queue(self.node_id),
                max_jobs=c["mux"] + c["upload"],
                **common,
            ),
        ]

    async def enqueue(self, stage: str, job_id: str, payload: dict[str, Any]) -> None:
        await self.redis.enqueue_job(
            stage,
            job_id,
            payload,
            _job_id=f"{job_id}:1:{stage}:1",
            _queue_name=node_queue(self.node_id),
            _expires=_EXPIRES,
        )


async def download(ctx: dict[str, Any], job_id: str, payload: dict[str, Any]) -> str:
    node: BaselineNode = ctx["node"]
    async with node.slots["download"]:
        started = time.time()
        workdir = node.workroot / job_id
        if workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def on_progress(p: downloader.DownloadProgress) -> None:
            loop.call_soon_threadsafe(node.progress.__setitem__, job_id, p)

        result = await asyncio.to_thread(
            downloader.download,
            payload["url"],
            workdir,
            guard=node.guard,
            audio_only=False,
            max_resolution="best",
            download_subtitles=False,
            download_thumbnail=False,
            on_progress=on_progress,
            cancel=threading.Event(),
        )
        payload = {
            **payload,
            "download_started": started,
            "download_s": result.seconds,
            "files": [f.path for f in result.files if f.kind in ("video", "audio", "av")],
            "title": result.info.title,
        }
    await node.enqueue("mux", job_id, payload)
    return "downloaded"


async def mux(ctx: dict[str, Any], job_id: str, payload: dict[str, Any]) -> str:
    node: BaselineNode = ctx["node"]
    async with node.slots["mux"]:
        mux_started = time.time()
        workdir = node.workroot / job_id
        result = await muxer.mux(
            [Path(p) for p in payload["files"]],
            workdir / "output.mp4",
            format="mp4",
            video_codec="copy",
            audio_codec="copy",
            audio_bitrate="192k",
            video_quality=23,
            quality_preset=None,
            max_resolution="best",
            audio_only=False,
            clip_start=None,
            clip_end=None,
            on_progress=lambda pct: node.progress.__setitem__(job_id, pct),
            cancel=asyncio.Event(),
        )
        payload = {
            **payload,
            "mux_started": mux_started,
            "mux_s": result.seconds,
            "output": result.path,
        }
    await node.enqueue("upload", job_id, payload)
    return "muxed"


async def upload(ctx: dict[str, Any], job_id: str, payload: dict[str, Any]) -> str:
    node: BaselineNode = ctx["node"]
    async with node.slots["upload"]:
        started = time.monotonic()
        name = f"{payload.get('title') or 'clip'} [{job_id.split('-')[0]}].mp4"
        await node.storage.put_file(
            object_key("", None, name),
            Path(payload["output"]),
            on_progress=lambda sent, total: node.progress.__setitem__(job_id, sent),
            cancel=asyncio.Event(),
        )
        upload_s = time.monotonic() - started
    shutil.rmtree(node.workroot / job_id, ignore_errors=True)
    node.progress.pop(job_id, None)
    done = {
        "job_id": job_id,
        "submitted": payload["submitted"],
        "download_started": payload["download_started"],
        "download_s": payload["download_s"],
        "mux_started": payload["mux_started"],
        "mux_s": payload["mux_s"],
        "upload_s": upload_s,
        "finished": time.time(),
        "node_id": node.node_id,
    }
    await node.redis.rpush(DONE_LIST, json.dumps(done))  # type: ignore[misc]
    return "uploaded"


async def submit(redis: ArqRedis, job_id: str, url: str) -> None:
    """Enqueue one job's download, as the bench's client does."""
    await redis.enqueue_job(
        "download",
        job_id,
        {"url": url, "submitted": time.time()},
        _job_id=f"{job_id}:1:download:1",
        _queue_name=DOWNLOAD_QUEUE,
        _expires=_EXPIRES,
    )


def start_nodes(
    node_ids: Sequence[str],
    *,
    redis_url: str,
    storage_url: str,
    root: Path,
    logs: Path,
    concurrency: str,
    log_prefix: str = "",
) -> list[subprocess.Popen[bytes]]:
    """A baseline node process per id (this module's `main`), its data under `root/<id>` and
    its log `logs/<log_prefix><id>.log`; the caller stops them (`stop_processes`)."""
    procs = []
    for node_id in node_ids:
        proc = start_module(
            "bench.pipeline_arq",
            "--node-id", node_id, "--redis-url", redis_url, "--storage-url", storage_url,
            "--data-dir", str(root / node_id), "--concurrency", concurrency,
            log=logs / f"{log_prefix}{node_id}.log",
        )  # fmt: skip
        procs.append(proc)
    return procs


async def wait_ready(
    redis: ArqRedis, node_ids: Sequence[str], procs: Sequence[subprocess.Popen[bytes]]
) -> None:
    """Until every node says it works (its ready key), or one of them has ended."""
    keys = [READY_PREFIX + n for n in node_ids]

    async def ready() -> bool:
        return bool(await redis.exists(*keys) == len(keys))

    await wait_for(ready, 60, "arq workers starting", procs)


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis = await connect(args.redis_url)
    storage = storage_from_url(args.storage_url, data_dir=args.data_dir)
    node = BaselineNode(
        node_id=args.node_id,
        redis=redis,
        storage=storage,
        data_dir=args.data_dir,
        allowlist=tuple(h for h in args.url_allowlist.split(",") if h),
        concurrency=_concurrency(args.concurrency),
    )
    node.workroot.mkdir(parents=True, exist_ok=True)
    workers = node.workers()
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    await redis.set(READY_PREFIX + args.node_id, "1", ex=3600)
    log.info("baseline node %s working", args.node_id)
    await stop.wait()
    for w in workers:
        w.handle_sig(signal.SIGTERM)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await storage.close()
    await redis.aclose()


def _concurrency(spec: str) -> dict[str, int]:
    out = {"download": 2, "mux": 1, "upload": 2}
    for part in filter(None, spec.split(",")):
        stage, _, n = part.partition("=")
        out[stage.strip()] = int(n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_arq", description=__doc__)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--storage-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--url-allowlist", default="127.0.0.1/32")
    parser.add_argument("--concurrency", default="download=2,mux=1,upload=2")
    # As `spool worker` logs: INFO, so arq's line per job is written by both sides.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
