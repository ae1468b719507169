"""The task, storage, key, viewer and node commands of `spool.application`, against a real
event store: each test calls one command the way a handler does and reads the log after it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from spool.adapters.event_store import EventStore
from spool.adapters.key_store import account_keys, issue
from spool.adapters.task_store import load_task
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.api.auth import Principal
from spool.application import keys, nodes, storage, tasks, viewers
from spool.domain import node, task, viewer
from spool.domain.account_policy import PolicyRefused
from spool.domain.errors import Conflict, Forbidden, NotFound
from spool.domain.events import Metadata
from spool.domain.storage_config import Sealed, StorageConfigured
from spool.reactors.projection import ProjectionRunner

META = Metadata(actor="test")


def _account() -> str:
    return uuid.uuid4().hex


def _task(task_type: str = "echo") -> tasks.NewTask:
    return tasks.NewTask(
        task_type=task_type,
        payload={"message": "hi"},
        priority="normal",
        requirements=task.Requirements(),
        metadata=None,
    )


async def _count(pool: asyncpg.Pool, event_type: str, account_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM events WHERE type = $1 AND data->>'account_id' = $2",
        event_type,
        account_id,
    )
    return count


# -- tasks ---------------------------------------------------------------------------------


async def test_a_code_task_without_a_grant_is_refused_and_appends_nothing(
    store: EventStore,
) -> None:
    account_id = _account()

    with pytest.raises(PolicyRefused):
        await tasks.submit_task(
            store, account_id, _task("command"), admin=False, idem=None, meta=META
        )
    assert await _count(store.pool, "TaskSubmitted", account_id) == 0


async def test_another_accounts_task_is_not_found_but_an_admin_may_cancel_it(
    store: EventStore,
) -> None:
    owner = _account()
    made = await tasks.submit_task(store, owner, _task(), admin=False, idem=None, meta=META)

    with pytest.raises(NotFound):
        await tasks.cancel_task(store, _account(), made.task_id, META, admin=False)
    cancelled = await tasks.cancel_task(store, _account(), made.task_id, META, admin=True)

    assert cancelled.status == "cancelled"
    again = await tasks.retry_task(store, owner, made.task_id, META, admin=False)
    assert again.status == "queued"
    assert (await load_task(store, made.task_id)) == again


# -- storage -------------------------------------------------------------------------------


def _s3(account_id: str) -> StorageConfigured:
    return StorageConfigured(
        account_id=account_id,
        provider="s3",
        bucket="media",
        sealed_credentials=Sealed(key_version=1, nonce="", ciphertext=""),
    )


async def test_removing_a_storage_the_account_has_not_configured_is_not_found(
    store: EventStore,
) -> None:
    account_id = _account()
    with pytest.raises(NotFound, match="No S3"):
        await storage.remove_storage(store, account_id, "s3", META)

    await storage.configure_storage(store, _s3(account_id), META)
    with pytest.raises(NotFound):
        await storage.remove_storage(store, account_id, "gcs", META)
    assert (await storage.storage_of(store, account_id)).current == _s3(account_id)


async def test_a_removed_storage_is_gone_and_cannot_be_removed_twice(store: EventStore) -> None:
    account_id = _account()
    await storage.configure_storage(store, _s3(account_id), META)

    await storage.remove_storage(store, account_id, "s3", META)

    assert (await storage.storage_of(store, account_id)).current is None
    with pytest.raises(NotFound):
        await storage.remove_storage(store, account_id, "s3", META)


# -- keys ----------------------------------------------------------------------------------


async def _holder(store: EventStore, runner: ProjectionRunner, scope: str) -> Principal:
    issued = await issue(store, name="holder", scope=scope)
    await runner.wait_until("api_keys", issued.at)
    return Principal(key_id=issued.key_id, account_id=issued.account_id, scope=scope)


async def test_a_key_cannot_create_a_key_with_more_scope_than_its_own(
    store: EventStore, runner: ProjectionRunner
) -> None:
    reader = await _holder(store, runner, "read")
    now = datetime.now(UTC)

    with pytest.raises(Forbidden, match="never holds more"):
        await keys.create_key(store, reader, "wider", "jobs", None, META, now=now)
    assert list(await account_keys(store, reader.account_id)) == [reader.key_id]


async def test_a_key_that_expires_leaves_no_key_behind_that_outlives_it(
    store: EventStore, runner: ProjectionRunner
) -> None:
    holder = await _holder(store, runner, "jobs")
    now = datetime.now(UTC)
    expiring = Principal(
        key_id=holder.key_id,
        account_id=holder.account_id,
        scope="jobs",
        expires_at=now + timedelta(days=1),
    )

    with pytest.raises(Forbidden, match="outlive"):
        await keys.create_key(
            store, expiring, "later", None, now + timedelta(days=2), META, now=now
        )
    made = await keys.create_key(store, expiring, "child", None, None, META, now=now)
    assert made.expires_at == expiring.expires_at and made.scope == "jobs"


async def test_a_rotated_out_key_manages_no_keys(
    store: EventStore, runner: ProjectionRunner
) -> None:
    holder = await _holder(store, runner, "jobs")
    rotated_out = Principal(
        key_id=holder.key_id, account_id=holder.account_id, scope="jobs", replaced=True
    )

    with pytest.raises(Forbidden, match="rotated out"):
        await keys.revoke_key(store, rotated_out, holder.key_id, META)


async def test_revoking_a_key_twice_says_it_already_was_and_another_accounts_key_is_unknown(
    store: EventStore, runner: ProjectionRunner
) -> None:
    holder = await _holder(store, runner, "jobs")
    stranger = await _holder(store, runner, "jobs")

    with pytest.raises(NotFound):
        await keys.revoke_key(store, stranger, holder.key_id, META)
    assert await keys.revoke_key(store, holder, holder.key_id, META) is True
    assert await keys.revoke_key(store, holder, holder.key_id, META) is False


# -- viewers and nodes ---------------------------------------------------------------------


async def test_a_viewer_report_with_one_refused_item_records_none_of_it(
    store: EventStore,
) -> None:
    recorder = ViewerRecorder(store, node_id="test")
    fresh, unknown = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    items: list[viewers.Item] = [
        viewers.ConnectItem(id=fresh, harness_type="STORM_HLS_VIEWER", state="PLAYING"),
        viewers.StateItem(id=unknown, state="PAUSED"),
    ]

    with pytest.raises(NotFound, match=r"events\[1\]"):
        await viewers.report_viewer_events(store, recorder, items, META, reporter="key:test")
    assert await store.read_stream(viewer.stream_id(fresh)) == []


async def test_a_reported_viewer_starts_when_the_clock_says(store: EventStore) -> None:
    recorder = ViewerRecorder(store, node_id="test")
    item = viewers.ConnectItem(harness_type="STORM_HLS_VIEWER", state="PLAYING")

    (viewer_id,) = await viewers.report_viewer_events(
        store, recorder, [item], META, reporter="key:test", clock=lambda: 1_700_000_000.0
    )

    (connected,) = await store.read_stream(viewer.stream_id(viewer_id))
    assert isinstance(connected.data, viewer.ViewerConnected)
    assert connected.data.started_at == 1_700_000_000_000
    assert connected.data.node_id == "key:test"
    with pytest.raises(Conflict):
        same = viewers.ConnectItem(id=viewer_id, harness_type="STORM_HLS_VIEWER", state="PLAYING")
        await viewers.report_viewer_events(store, recorder, [same], META, reporter="key:test")


async def test_a_removed_node_has_its_removal_recorded(store: EventStore) -> None:
    node_id = f"node-{uuid.uuid4().hex[:8]}"

    at = await nodes.remove_node(store, node_id, META)

    (removed,) = await store.read_stream(node.stream_id(node_id))
    assert removed.data == node.NodeRemoved(node_id=node_id)
    assert removed.position == at.position
