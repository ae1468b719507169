"""The node: registration, heartbeat and stage runner together, and its life from start to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from spool.adapters import log_context
from spool.adapters.periodic import run_periodically
from spool.adapters.queue import DOWNLOAD_QUEUE, listen_for_wakeups, node_queue
from spool.domain import node
from spool.reactors.worker.arq_workers import arq_workers, keep_working
from spool.reactors.worker.heartbeat import Heartbeat
from spool.reactors.worker.shutdown import (
    CANCEL_GRACE,
    INTERRUPT_GRACE,
    interrupt_running,
    stop_workers,
)
from spool.reactors.worker.stages_runner import StageRunner
from spool.reactors.worker.sweep import sweep_workroot

log = logging.getLogger("spool.node")


class Node(Heartbeat, StageRunner):
    """Runs stages for the cluster and reports on itself."""

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interrupt_grace: float = INTERRUPT_GRACE,
        cancel_grace: float = CANCEL_GRACE,
    ) -> None:
        """Work until `stop` is set; then interrupt what is running and say goodbye.

        Each running stage is told to stop (its download, FFmpeg or upload cut off) and records
        itself as interrupted, so that it runs again on the next start without spending an
        attempt; one that does not stop within `interrupt_grace` seconds is cancelled and
        recorded here. Units still waiting for a slot go back to their queue untouched.
        """
        log_context.NODE_ID.set(self.node_id)  # on every record of the node's tasks
        self.workroot.mkdir(parents=True, exist_ok=True)
        self._removal_seen = await self._removed_at()
        # Before any unit is taken: what a killed or cut-off run of this node left behind.
        await self._sweep()
        await self._register()
        await self.viewers.start()
        workers = arq_workers(self)
        self.downloads = next(w for w in workers if w.queue_name == DOWNLOAD_QUEUE)
        # A drain and a quarantine outlive a restart: pick nothing from the start.
        await self._follow_health()
        listening = asyncio.Event()
        wakeups = asyncio.create_task(
            listen_for_wakeups(self.redis, self.wakes, listening), name="queue wake-ups"
        )
        tasks = [
            asyncio.create_task(keep_working(w, stop), name=f"arq:{w.queue_name}") for w in workers
        ]
        ticker = asyncio.create_task(self._tick_forever(stop), name="heartbeat")
        sweeper = asyncio.create_task(self._sweep_forever(stop), name="work sweep")
        log.info("node %s working (download queue + %s)", self.node_id, node_queue(self.node_id))
        await stop.wait()
        self.stopping = True
        for w in workers:
            w.allow_pick_jobs = False  # nothing new from now on
        left = await interrupt_running(self.running, interrupt_grace)
        await stop_workers(workers, tasks, cancel_grace, self.chains)
        listening.set()
        for t in (ticker, wakeups, sweeper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for unit in left:
            with contextlib.suppress(Exception):
                await self._interrupt(unit)
        await self._append_node(node.NodeStopped(node_id=self.node_id))
        await self.viewers.aclose()
        await self.storages.aclose()

    def _busy_jobs(self) -> set[str]:
        """The jobs this node has units of, running or taken: their folders are in use."""
        claimed = {unit_id.split(":", 1)[0] for unit_id in self.claimed}
        return claimed | {unit.job_id for unit in self.running.values()}

    async def _sweep(self) -> None:
        # Below its disk floor the node keeps nothing for a retry: disk for downloads comes first.
        keep = timedelta(seconds=0 if self.disk_floor else self.settings.failed_files_keep)
        await sweep_workroot(
            self.store, self.workroot, self.node_id, keep=keep, busy=self._busy_jobs
        )

    async def _sweep_forever(self, stop: asyncio.Event) -> None:
        """Sweep the work folder every `work_sweep_interval` (the start swept it already):
        what reclaims the files kept for a retry from mux or upload once their time is up."""
        interval = self.settings.work_sweep_interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        await run_periodically(
            self._sweep, interval=interval, stop=stop, what="work folder sweep", logger=log
        )
