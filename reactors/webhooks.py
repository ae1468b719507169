"""Webhooks: a reactor that queues deliveries as jobs finish, and the arq function that sends them.

Completion and failure webhooks are retried with exponential backoff and every attempt is an
event on the job's stream. Progress webhooks (`enable_progress_webhook`) are best effort: one
attempt each, at most one per progress event, not recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
import sqlalchemy as sa
from arq import Retry
from arq.connections import ArqRedis

from spool.adapters import webhook_client
from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.file_links import file_link, link_key
from spool.adapters.job_store import jobs, load_job
from spool.adapters.queue import dispatch_webhook, webhook_for
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.domain import job
from spool.domain.events import NO_CAUSE, Metadata, RecordedEvent, event_id
from spool.domain.webhook import account_secret

log = logging.getLogger("spool.webhooks")


class WebhookReactor:
    """Queues a delivery for each finished job (and each progress step, when asked)."""

    name = "webhooks"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = frozenset(
        cls.__name__
        for cls in (
            job.JobCreated,
            job.JobCompleted,
            job.JobFailed,
            job.JobCancelled,
            job.StageStarted,
            job.StageProgressed,
        )
    )

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        # job id -> (webhook url, progress too?), learned from JobCreated as it passes and
        # forgotten when the job ends, so it holds the live jobs only (a retry asks the table).
        self._targets: dict[str, tuple[str | None, bool]] = {}

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            job_id = e.stream_id.removeprefix("job-")
            ev = e.data
            if isinstance(ev, job.JobCreated):
                self._targets[job_id] = (ev.options.webhook_url, ev.options.enable_progress_webhook)
                continue
            if isinstance(ev, job.JobCancelled):
                self._targets.pop(job_id, None)
                continue
            url, progress = await self._target(conn, job_id)
            if isinstance(ev, job.JobCompleted | job.JobFailed):
                self._targets.pop(job_id, None)
            if url is None:
                continue
            delivery = webhook_for(job_id, ev, e.version, progress=progress)
            if delivery is None:
                continue
            await dispatch_webhook(
                self.redis,
                delivery._replace(
                    correlation_id=e.metadata.correlation_id, causation_id=event_id(e.position)
                ),
            )

    async def _target(self, conn: asyncpg.Connection, job_id: str) -> tuple[str | None, bool]:
        if job_id not in self._targets:
            options = await job_rows.options_of(conn, job_id)
            self._targets[job_id] = (options.webhook_url, options.enable_progress_webhook)
        return self._targets[job_id]


class Payload(msgspec.Struct, omit_defaults=True):
    """What a webhook POST carries."""

    event: str
    job_id: str
    status: str
    step: str
    sent_at: int
    title: str | None = None
    error: str | None = None
    error_type: str | None = None
    storage_key: str | None = None
    s3_url: str | None = None
    file_size: int | None = None
    progress: job.Progress | None = None


class WebhookSender:
    """Sends deliveries for one node; held in the arq context."""

    def __init__(self, store: EventStore, storages: AccountStorages, settings: Settings) -> None:
        self.store = store
        self.storages = storages
        self.settings = settings
        self.guard = UrlGuard(settings.url_allowlist)
        self.secret_key = settings.resolved_secret_key()
        self.meta = Metadata(actor=f"node:{settings.node_id}", node_id=settings.node_id)

    async def _progress_of(self, job_id: str, version: int) -> job.Progress | None:
        """The progress the triggering event reported (not where the job is by now)."""
        found = await self.store.read_stream(job.stream_id(job_id), version, limit=1)
        ev = found[0].data if found else None
        if isinstance(ev, job.StageProgressed):
            return ev.progress
        if isinstance(ev, job.StageStarted):
            return job.Progress(stage=ev.stage, percent=0.0)
        return None

    async def deliver(
        self,
        job_id: str,
        run: int,
        kind: str,
        attempt: int,
        version: int = 0,
        cause: Metadata = NO_CAUSE,
    ) -> str:
        """Send one delivery; its outcome event carries `cause`'s correlation and causation."""
        state = await load_job(self.store, job_id)
        if state is None or state.options.webhook_url is None or state.run != run:
            return "stale"
        if kind == "job.progress" and state.terminal:
            return "stale"  # the job finished meanwhile: its final webhook says more
        payload = Payload(
            event=kind,
            job_id=job_id,
            status=state.status,
            step=state.step,
            sent_at=int(time.time() * 1000),
            title=state.title,
            error=state.error,
            error_type=state.error_type,
            storage_key=state.key,
            file_size=state.file_size,
            progress=await self._progress_of(job_id, version) if kind == "job.progress" else None,
        )
        if kind == "job.completed" and state.key and not state.file_deleted:
            storage = await self.storages.for_job(state.account_id, state.storage_override)
            payload.s3_url = await file_link(
                storage,
                job_id=job_id,
                kind="media",
                object_key=state.key,
                public_url=self.settings.resolved_public_url(),
                key=link_key(self.secret_key),
                now=time.time(),
            )
        url = state.options.webhook_url
        answer, retry = await webhook_client.post(
            url,
            msgspec.json.encode(payload),
            secret=account_secret(self.secret_key, state.account_id),
            kind=kind,
            guard=self.guard,
        )
        if kind == "job.progress":
            return "sent" if answer.ok else f"dropped: {answer.reason}"
        final = not retry or attempt >= self.settings.webhook_attempts
        outcome: job.WebhookKind = "job.completed" if kind == "job.completed" else "job.failed"
        recorded: job.WebhookDelivered | job.WebhookFailed
        if answer.ok:
            assert answer.status_code is not None
            recorded = job.WebhookDelivered(
                kind=outcome,
                url=url,
                attempt=attempt,
                status_code=answer.status_code,
                seconds=answer.seconds,
            )
        else:
            recorded = job.WebhookFailed(
                kind=outcome,
                url=url,
                attempt=attempt,
                reason=answer.reason,
                final=final,
            )
        meta = self.meta.following(cause)
        # A fact about the delivery, whatever the job did since: recorded where its stream ends.
        await jobs(self.store).record(job_id, [recorded], meta)
        if answer.ok:
            return "delivered"
        if final:
            return f"failed: {answer.reason}"
        raise Retry(defer=self.settings.webhook_backoff * 2 ** (attempt - 1))


async def deliver_webhook(
    ctx: dict[str, Any],
    job_id: str,
    run: int,
    kind: str,
    version: int,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> str:
    """arq entry point: deliver one webhook (attempt = arq's try number)."""
    sender: WebhookSender = ctx["webhooks"]
    cause = Metadata(correlation_id=correlation_id, causation_id=causation_id)
    return await sender.deliver(job_id, run, kind, int(ctx.get("job_try", 1)), version, cause)
