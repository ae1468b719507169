"""The `reporting` schema: SQL views over the projection tables that Spool keeps compatible.

docs/reporting.md documents every view and column; tests/test_reporting.py holds the two
together. The promise: a view's columns keep their names, types and meaning; new columns may
be added at the end (which `CREATE OR REPLACE VIEW` allows), nothing is renamed or removed.
A change here comes with a migration that calls `statements()` again.

A view computes no status or count of its own: one that the API also shows is written by
the projection (with the domain's function) and read here as a column, so the two cannot
disagree. Every column is cast to its documented type in the view, so a change in a projection table
(or in the JSON of a folded state) cannot change what a report sees without a failing test.
A projection rebuild swaps tables, which views depend on: in the swap's transaction it points
the views at the new tables before it drops the old ones (`repoint_views`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

import asyncpg

from spool.adapters.read_models.nodes import configured_timeout, online, work_state_sql

SCHEMA = "reporting"

# Each view with its definition, in creation order.
VIEWS: dict[str, str] = {
    "jobs": """
SELECT j.job_id::text AS job_id,
       j.account_id::text AS account_id,
       j.batch_id::text AS batch_id,
       j.url::text AS url,
       (j.state->>'title')::text AS title,
       j.status::text AS status,
       j.step::text AS step,
       (j.state->>'stage')::text AS stage,
       (j.state->>'node_id')::text AS node_id,
       coalesce((j.state->>'run')::int, 1)::integer AS run,
       coalesce((j.state->'retries'->>'download')::int, 0)::integer AS download_retries,
       coalesce((j.state->'retries'->>'mux')::int, 0)::integer AS mux_retries,
       coalesce((j.state->'retries'->>'upload')::int, 0)::integer AS upload_retries,
       (j.state->>'error')::text AS error,
       (j.state->>'error_type')::text AS error_type,
       coalesce(j.state->'options'->>'format',
                CASE WHEN (j.state->'options'->>'audio_only')::boolean THEN 'm4a' ELSE 'mp4' END
       )::text AS format,
       (j.state->>'file_size')::bigint AS file_size_bytes,
       (j.state->>'key')::text AS storage_key,
       coalesce((j.state->>'file_deleted')::boolean, false)::boolean AS file_deleted,
       (j.state->>'duration')::double precision AS media_duration_seconds,
       (j.state->>'video_codec')::text AS video_codec,
       (j.state->>'audio_codec')::text AS audio_codec,
       (j.state->>'webhook_status')::text AS webhook_status,
       j.created_at::timestamptz AS created_at,
       (j.state->>'started_at')::timestamptz AS started_at,
       j.finished_at::timestamptz AS finished_at,
       j.updated_at::timestamptz AS updated_at,
       -- The current run's, as GET /jobs/{id} says them: from its retry, if it was retried.
       (extract(epoch FROM (j.state->>'started_at')::timestamptz
                - coalesce((j.state->>'retried_at')::timestamptz, j.created_at)) * 1000
       )::bigint AS queue_wait_ms,
       (extract(epoch FROM j.finished_at
                - coalesce((j.state->>'retried_at')::timestamptz, j.created_at)) * 1000
       )::bigint AS duration_ms,
       j.version::integer AS version
FROM public.jobs j
""",
    "job_stages": """
SELECT s.job_id::text AS job_id,
       j.account_id::text AS account_id,
       s.run::integer AS run,
       s.stage::text AS stage,
       s.attempt::integer AS attempt,
       s.node_id::text AS node_id,
       s.started_at::timestamptz AS started_at,
       s.finished_at::timestamptz AS finished_at,
       (extract(epoch FROM s.finished_at - s.started_at) * 1000)::bigint AS duration_ms,
       s.work_ms::bigint AS work_ms,
       s.outcome::text AS outcome,
       s.bytes::bigint AS bytes,
       s.reason::text AS reason
FROM public.job_stages s
LEFT JOIN public.jobs j ON j.job_id = s.job_id
""",
    "job_minutes": """
SELECT m.minute::timestamptz AS minute,
       m.jobs_completed::bigint AS completed,
       m.jobs_failed::bigint AS failed,
       m.bytes_uploaded::bigint AS bytes,
       m.jobs_cancelled::bigint AS cancelled,
       m.jobs_created::bigint AS created,
       m.bytes_downloaded::bigint AS bytes_downloaded
FROM public.job_minutes m
""",
    "batches": """
SELECT b.batch_id::text AS batch_id,
       b.account_id::text AS account_id,
       b.kind::text AS kind,
       b.status::text AS status,
       b.source_url::text AS source_url,
       b.title::text AS title,
       b.created_at::timestamptz AS created_at,
       b.started_at::timestamptz AS started_at,
       b.updated_at::timestamptz AS updated_at,
       cardinality(b.job_ids)::integer AS jobs_total,
       b.jobs_pending::integer AS jobs_pending,
       b.jobs_processing::integer AS jobs_processing,
       b.jobs_completed::integer AS jobs_completed,
       b.jobs_failed::integer AS jobs_failed,
       b.jobs_cancelled::integer AS jobs_cancelled,
       b.bytes_uploaded::bigint AS bytes_uploaded,
       b.last_finished_at::timestamptz AS last_finished_at,
       b.jobs_skipped::integer AS jobs_skipped
FROM public.batches b
""",
    "usage_daily": """
SELECT u.account_id::text AS account_id,
       u.day::date AS day,
       u.jobs_created::bigint AS jobs_created,
       u.jobs_completed::bigint AS jobs_completed,
       u.jobs_failed::bigint AS jobs_failed,
       u.jobs_cancelled::bigint AS jobs_cancelled,
       u.bytes_downloaded::bigint AS bytes_downloaded,
       u.bytes_uploaded::bigint AS bytes_uploaded,
       u.bytes_deleted::bigint AS bytes_deleted
FROM public.usage_daily u
""",
    "nodes": f"""
SELECT n.node_id::text AS node_id,
       n.hostname::text AS hostname,
       n.ip::text AS ip,
       n.role::text AS role,
       n.tags::text[] AS tags,
       (n.capabilities->>'cpu_count')::integer AS cpu_count,
       (n.capabilities->>'memory_total_gb')::double precision AS memory_total_gb,
       (n.capabilities->>'storage_total_gb')::double precision AS storage_total_gb,
       coalesce((n.capabilities->>'has_gpu')::boolean, false)::boolean AS has_gpu,
       n.started_at::timestamptz AS started_at,
       n.stopped_at::timestamptz AS stopped_at,
       n.removed_at::timestamptz AS removed_at,
       n.last_heartbeat_at::timestamptz AS last_heartbeat_at,
       {online(configured_timeout("public.cluster_config"), "n")}::boolean AS online,
       n.downloading::integer AS downloading,
       n.muxing::integer AS muxing,
       n.uploading::integer AS uploading,
       n.heartbeats::bigint AS heartbeats,
       (n.usage->>'cpu_percent')::double precision AS cpu_percent,
       (n.usage->>'memory_used')::bigint AS memory_used_bytes,
       (n.usage->>'memory_total')::bigint AS memory_total_bytes,
       (n.usage->>'disk_free')::bigint AS disk_free_bytes,
       (n.usage->>'disk_total')::bigint AS disk_total_bytes,
       {work_state_sql("n")}::text AS state,
       n.draining_since::timestamptz AS draining_since,
       n.quarantined_since::timestamptz AS quarantined_since,
       n.quarantine_reason::text AS quarantine_reason,
       n.disk_floor::text AS disk_floor
FROM public.nodes n
""",
    "node_minutes": """
SELECT m.node_id::text AS node_id,
       m.minute::timestamptz AS minute,
       m.samples::bigint AS samples,
       m.cpu_percent_sum::numeric AS cpu_percent_sum,
       (m.cpu_percent_sum / m.samples)::double precision AS cpu_percent_avg,
       m.cpu_percent_max::double precision AS cpu_percent_max,
       (100 * m.memory_used_sum / nullif(m.memory_total_sum, 0))::double precision
           AS memory_percent_avg,
       m.memory_percent_max::double precision AS memory_percent_max,
       (m.memory_used_sum / m.samples)::bigint AS memory_used_bytes_avg,
       m.downloading_max::integer AS downloading_max,
       m.muxing_max::integer AS muxing_max,
       m.uploading_max::integer AS uploading_max
FROM public.node_minutes m
""",
    "tasks": """
SELECT t.task_id::text AS task_id,
       t.account_id::text AS account_id,
       t.task_type::text AS task_type,
       t.status::text AS status,
       t.priority::text AS priority,
       t.device_id::text AS device_id,
       t.attempt::integer AS attempt,
       t.retry_count::integer AS retry_count,
       t.max_retries::integer AS max_retries,
       t.timeout_seconds::integer AS timeout_seconds,
       t.reason::text AS reason,
       t.error::text AS error,
       t.payload::jsonb AS payload,
       t.result::jsonb AS result,
       t.created_at::timestamptz AS created_at,
       t.updated_at::timestamptz AS updated_at,
       t.assigned_at::timestamptz AS assigned_at,
       t.started_at::timestamptz AS started_at,
       t.completed_at::timestamptz AS completed_at,
       t.execution_time_seconds::double precision AS execution_time_seconds,
       (extract(epoch FROM t.started_at - t.created_at) * 1000)::bigint AS queue_wait_ms
FROM public.tasks t
""",
    "viewers": """
SELECT v.viewer_id::text AS viewer_id,
       v.state::text AS state,
       v.harness_type::text AS harness_type,
       v.system::boolean AS system,
       v.application_id::text AS application_id,
       v.stream_key::text AS stream_key,
       v.node_id::text AS node_id,
       v.remote_address::text AS remote_address,
       v.device_type::text AS device_type,
       v.os_name::text AS os_name,
       v.browser_name::text AS browser_name,
       v.country_code::text AS country_code,
       v.country_name::text AS country_name,
       (timestamptz 'epoch' + v.started_at * interval '1 millisecond')::timestamptz
           AS started_at,
       v.last_seen_at::timestamptz AS last_seen_at,
       v.bitrate::bigint AS bitrate,
       v.in_bandwidth::bigint AS in_bandwidth,
       v.out_bandwidth::bigint AS out_bandwidth,
       v.in_total_bytes::bigint AS in_total_bytes,
       v.out_total_bytes::bigint AS out_total_bytes,
       v.health_score::integer AS health_score,
       v.health_grade::text AS health_grade
FROM public.viewers v
""",
}


def statements(
    moved: Mapping[str, str] | None = None, views: Collection[str] | None = None
) -> list[str]:
    """The DDL that creates the schema and creates or replaces every view, one statement each.

    `moved` maps a table name to the schema to read it from instead of `public` (a rebuild's
    copy about to be swapped in). `views` limits it to those views (for a migration older than
    the current definition of some view).
    """
    out = [f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"]
    for name, sql in VIEWS.items():
        if views is not None and name not in views:
            continue
        for table, schema in (moved or {}).items():
            sql = re.sub(rf"\bpublic\.{re.escape(table)}\b", f"{schema}.{table}", sql)
        out.append(f"CREATE OR REPLACE VIEW {SCHEMA}.{name} AS {sql}")
    return out


def drop_statements() -> list[str]:
    """The DDL that drops every view (the schema stays)."""
    return [f"DROP VIEW IF EXISTS {SCHEMA}.{name}" for name in reversed(VIEWS)]


async def repoint_views(conn: asyncpg.Connection, schema: str, tables: Iterable[str]) -> None:
    """Point the views at `tables` in `schema` (in this transaction) before the live ones go.

    A view follows its table by identity, not by name: pointed at a rebuild's copies, the views
    move with them when they are moved into `public`, and the old tables can be dropped. The
    views themselves are replaced, never dropped, so views a user built on them stay.
    Nothing is done on a database without the reporting schema.
    """
    if not await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", SCHEMA):
        return
    for statement in statements(dict.fromkeys(tables, schema)):
        await conn.execute(statement)
