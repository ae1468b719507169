"""What a node holds: its services, its settings, and the units it has taken on."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from arq.connections import ArqRedis
from arq.worker import Worker

from spool.adapters import sysinfo
from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.queue import DOWNLOAD_QUEUE, WEBHOOK_QUEUE, node_queue
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.domain import job
from spool.domain.events import Metadata
from spool.reactors.webhooks import WebhookSender
from spool.reactors.worker.unit import RunningUnit


class NodeState:
    """The state every part of a node (registration, heartbeat, stage runner) works on."""

    def __init__(
        self,
        *,
        store: EventStore,
        redis: ArqRedis,
        storage: ObjectStorage,
        settings: Settings,
    ) -> None:
        self.store = store
        self.redis = redis
        self.storage = storage
        # Each account's uploads go to its own storage when it configured one: one client per
        # storage for the node's life (closed in `run` when it stops), and the account's row
        # read for each upload (ttl 0), so a storage configured a moment ago takes the next one.
        self.guard = UrlGuard(settings.url_allowlist)
        self.storages = AccountStorages(
            store.pool, settings.resolved_secret_key(), storage, guard=self.guard, ttl=0.0
        )
        self.settings = settings
        self.node_id = settings.node_id
        self.workroot = settings.data_dir / "work"
        self.running: dict[str, RunningUnit] = {}
        # The job as this node left it after recording a stage, for its next stage here (mux
        # and upload come back to this node): no read of the job per stage. Bounded, since a
        # job cancelled in between never calls for its next stage.
        self.known: dict[str, job.JobState] = {}
        # Units taken from a queue but perhaps still waiting for a slot: reported as running so
        # the reconciler never mistakes them for lost.
        self.claimed: set[str] = set()
        # The tasks of stages this node went straight on to after the one before (mux after
        # its download, upload after its mux: `StageRunner._go_on`), outside any arq unit.
        self.chains: set[asyncio.Task[str]] = set()
        self.slots = {
            "download": asyncio.Semaphore(settings.download_concurrency),
            "mux": asyncio.Semaphore(settings.mux_concurrency),
            "upload": asyncio.Semaphore(settings.upload_concurrency),
        }
        self.meta = Metadata(actor=f"node:{self.node_id}", node_id=self.node_id)
        # Set when a unit is enqueued on the queue (adapters/queue.py `listen_for_wakeups`): its
        # arq worker looks at once instead of at its next poll.
        self.wakes = {
            q: asyncio.Event() for q in (DOWNLOAD_QUEUE, node_queue(self.node_id), WEBHOOK_QUEUE)
        }
        self.webhooks = WebhookSender(store, self.storages, settings)
        self.hostname = sysinfo.hostname()
        # Where the node is, as the cluster sees it: the address it reaches the database from.
        database = urlsplit(settings.database_url).hostname if settings.database_url else None
        self.ip = settings.node_address or sysinfo.primary_ip(toward=database)
        # The stage sessions this node holds (TRANSCODER, FILE_WRITER), reported as viewers.
        self.viewers = ViewerRecorder(
            store, node_id=self.node_id, interval=settings.viewer_stats_interval
        )
        # The `removed_at` of the last removal this node answered by registering again.
        self._removal_seen: Any = None
        self._heartbeat_day: date | None = None
        # Whether the node may have rows in `live_progress`: true at start, so the first beat
        # clears what a previous run of this node left there.
        self._live_sent = True
        self.stopping = False
        # Why the node takes no new download now (drained, quarantined, below its disk floor:
        # reactors/worker/drain.py), and the arq worker of the shared download queue, which
        # picks nothing while it is so.
        self.refusing: str | None = None
        self.quarantined = False
        self.floor = settings.resolved_disk_floor()
        self.disk_floor: str | None = None
        """Why its disk takes no download (below the floor), as its heartbeat says."""
        self._probe_taken: float | None = None
        self.downloads: Worker | None = None
