"""`GET /metrics`: Prometheus text, with the seed's metrics and Spool's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from spool.domain import job, node, task
from spool.domain.events import NewEvent
from tests.cluster_api_helpers import FreshApi, append_node, fresh_api, heartbeat, node_started

SCRAPE_TOKEN = "scrape-" + "0123456789abcdef" * 2


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url, metrics_token=SCRAPE_TOKEN) as a:
        yield a


async def _scrape(api: FreshApi) -> dict[str, list[Sample]]:
    answer = await api.client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


async def _a_finished_task(api: FreshApi, task_id: str) -> None:
    events = [
        task.TaskSubmitted(task_id=task_id, account_id="acct", task_type="echo"),
        task.TaskAssigned(device_id="laptop-001", attempt=1),
        task.TaskStarted(device_id="laptop-001", attempt=1),
        task.TaskSucceeded(device_id="laptop-001", attempt=1, execution_time_seconds=0.05),
    ]
    await api.store.append(task.stream_id(task_id), [NewEvent(e) for e in events], 0)


async def test_metrics_carry_the_seeds_metrics(api: FreshApi) -> None:
    await append_node(
        api.store, api.runner, "laptop-001", node_started("laptop-001"), heartbeat("laptop-001")
    )
    await append_node(
        api.store,
        api.runner,
        "old-001",
        node_started("old-001"),
        node.NodeStopped(node_id="old-001"),
    )
    await _a_finished_task(api, "t-1")
    await _a_finished_task(api, "t-2")
    await api.runner.settle()
    samples = await _scrape(api)
    assert _value(samples, "retire_cluster_devices_total", status="online") == 1
    assert _value(samples, "retire_cluster_devices_total", status="offline") == 1
    assert _value(samples, "retire_cluster_tasks_total", status="success") == 2
    assert _value(samples, "spool_task_execution_seconds_total", task_type="echo") == 0.1


async def test_metrics_show_projection_lag_and_append_latency(api: FreshApi) -> None:
    await api.runner.settle()
    caught_up = await _scrape(api)
    assert _value(caught_up, "spool_projection_lag_events", projection="nodes") == 0
    assert _value(caught_up, "spool_projection_lag_seconds", projection="nodes") == 0
    # Events the nodes projection has not applied yet are its lag.
    appended = await append_node(
        api.store, None, "laptop-001", node_started("laptop-001"), heartbeat("laptop-001")
    )
    # Readable once every older transaction on the server has ended (another test's, too).
    await api.store.wait_readable(appended.checkpoint)
    behind = await _scrape(api)
    assert _value(behind, "spool_projection_lag_events", projection="nodes") == 2
    assert _value(behind, "spool_projection_lag_events", projection="api_keys") == 0
    assert _value(behind, "spool_event_log_head_position") >= 2
    # This process timed its appends (the test's store is the API's timed store).
    assert _value(behind, "spool_event_store_append_seconds_count", kind="append") >= 1


async def test_metrics_count_jobs_by_status_and_step(api: FreshApi) -> None:
    await api.pool.execute(
        """
        INSERT INTO jobs (job_id, account_id, url, status, step, created_at, updated_at,
                          finished_at, version, state)
        VALUES ('j1', 'acct', 'http://x', 'Completed', 'Finished', now(), now(), now(), 5,
                '{"timings": {"download": {"seconds": 3.0}, "mux": {"seconds": 12.0}}}'),
               ('j2', 'acct', 'http://x', 'Processing', 'Muxing', now(), now(), NULL, 3,
                '{"timings": {"download": {"seconds": 40.0}}}')
        """
    )
    samples = await _scrape(api)
    assert _value(samples, "spool_jobs_total", status="Completed", step="Finished") == 1
    assert _value(samples, "spool_jobs_total", status="Processing", step="Muxing") == 1
    assert _value(samples, "spool_stage_duration_seconds_count", stage="download") == 2
    assert _value(samples, "spool_stage_duration_seconds_sum", stage="download") == 43.0
    assert _value(samples, "spool_stage_duration_seconds_bucket", stage="download", le="5.0") == 1
    assert _value(samples, "spool_stage_duration_seconds_bucket", stage="mux", le="15.0") == 1


async def test_queue_age_is_how_long_the_oldest_unit_of_each_stage_has_waited_for_a_node(
    api: FreshApi,
) -> None:
    # w1 and w2 wait for a download (w1 for two minutes), w3 for its upload; r1 runs its mux
    # (it shows progress), h1 is held in a paused batch and d1 has finished: none of those waits.
    await api.pool.execute(
        """
        INSERT INTO jobs (job_id, account_id, url, status, step, created_at, updated_at,
                          finished_at, version, state)
        VALUES ('w1', 'acct', 'http://x', 'Pending', 'Queued', now() - interval '2 min',
                now() - interval '120 s', NULL, 1, '{}'),
               ('w2', 'acct', 'http://x', 'Pending', 'Queued', now(), now() - interval '5 s',
                NULL, 1, '{}'),
               ('w3', 'acct', 'http://x', 'Processing', 'Muxing', now() - interval '1 h',
                now() - interval '30 s', NULL, 4, '{"stage": "upload"}'),
               ('r1', 'acct', 'http://x', 'Processing', 'Muxing', now() - interval '1 h',
                now() - interval '1 h', NULL, 4,
                '{"stage": "mux", "progress": {"stage": "mux", "percent": 10.0}}'),
               ('h1', 'acct', 'http://x', 'Pending', 'Queued', now() - interval '1 h',
                now() - interval '1 h', NULL, 1, '{"held": true}'),
               ('d1', 'acct', 'http://x', 'Completed', 'Finished', now() - interval '1 h',
                now() - interval '1 h', now(), 5, '{"stage": "upload"}')
        """
    )
    samples = await _scrape(api)
    assert 120 <= _value(samples, "spool_queue_oldest_seconds", stage="download") < 300
    assert 30 <= _value(samples, "spool_queue_oldest_seconds", stage="upload") < 300
    assert _value(samples, "spool_queue_oldest_seconds", stage="mux") == 0


async def test_metrics_answer_an_admin_key_or_the_scrape_token_and_nobody_else(
    api: FreshApi,
) -> None:
    await append_node(api.store, api.runner, "scraped-001", node_started("scraped-001"))
    by_token = await api.client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    by_admin = await api.client.get("/metrics", headers=api.admin())
    by_admin_bearer = await api.client.get(
        "/metrics", headers={"Authorization": f"Bearer {api.admin_key}"}
    )
    for answer in (by_token, by_admin, by_admin_bearer):
        assert answer.status_code == 200, answer.text
        assert "retire_cluster_devices_total" in answer.text

    nobody = await api.client.get("/metrics")
    user = await api.client.get("/metrics", headers=api.user())
    user_bearer = await api.client.get("/metrics", headers={"Authorization": f"Bearer {api.key}"})
    wrong = await api.client.get(
        "/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN[:-1]}x"}
    )
    assert (nobody.status_code, user.status_code, user_bearer.status_code) == (401, 403, 403)
    assert wrong.status_code == 401
    for refused in (nobody, user, user_bearer, wrong):
        assert set(refused.json()) == {"error"}, refused.text
        assert "retire_cluster" not in refused.text


async def test_without_a_scrape_token_only_an_admin_key_reads_metrics(
    fresh_database_url: str, redis_url: str
) -> None:
    async with fresh_api(fresh_database_url, redis_url) as api:
        # No token configured: an empty Bearer or a guess at one is no way in.
        for headers in ({"Authorization": "Bearer "}, {"Authorization": "Bearer None"}, {}):
            assert (await api.client.get("/metrics", headers=headers)).status_code == 401
        assert (await api.client.get("/metrics", headers=api.admin())).status_code == 200


async def test_metrics_count_the_units_handed_on_for_an_expired_lease_by_stage(
    api: FreshApi,
) -> None:
    created = job.create(job_id="j1", account_id="acct", url="http://x", options=job.JobOptions())
    lapsed = job.StageFailed(
        stage="download",
        run=1,
        attempt=1,
        node_id="gone",
        reason="The lease of node gone on download expired",
        retry_stage="download",
        retry_attempt=2,
        lease_expired=True,
    )
    broken = job.StageFailed(
        stage="download", run=1, attempt=2, node_id="n2", reason="HTTP 500", retry_attempt=3
    )
    events = [
        *created,
        job.StageStarted(stage="download", run=1, attempt=1, node_id="gone"),
        lapsed,
        job.StageStarted(stage="download", run=1, attempt=2, node_id="n2"),
        broken,
    ]
    await api.store.append(job.stream_id("j1"), [NewEvent(e) for e in events], 0)
    await api.runner.settle()
    samples = await _scrape(api)
    assert _value(samples, "spool_lease_expiries_total", stage="download") == 1
    assert _value(samples, "spool_lease_expiries_total", stage="mux") == 0
    assert _value(samples, "spool_lease_expiries_total", stage="upload") == 0
