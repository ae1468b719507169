"""What operators load beside a cluster (deploy/): Prometheus alert rules and a Grafana
dashboard over the API's `GET /metrics`, written only over metrics a real scrape shows.

The rule files are checked against Prometheus's rule file format (rulefmt, what `promtool check
rules` reads: its groups, its rules' keys, its durations) and every expression, in the rules
and in the dashboard's panels, is parsed by promql-parser (the PromQL parser GreptimeDB
maintains in Rust, with Python bindings), which also names the metrics each one selects and
the labels it matches or groups them by. Each of those metrics must be in a scrape of the API
(a family without samples still prints its HELP and TYPE lines), and each of those labels on
its samples, in a scrape of an API whose log holds a node, a completed job and a failed one.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster_api_helpers import append_node, fresh_api, heartbeat, node_started
from tests.fixtures.databases import Databases

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "spool-rules.yml"
NODE_HEALTH_RULES = DEPLOY / "prometheus" / "spool-rules-node-health.yml"
DASHBOARD = DEPLOY / "grafana" / "spool-dashboard.json"

NODE_HEALTH = frozenset({"spool_lease_expiries_total", "spool_nodes"})
"""The node-health metrics the dashboard names: its panels over them are checked apart, for the
names and labels a scrape has, since no node here has been unhealthy in every way."""


GROUP_KEYS = {"name", "interval", "limit", "query_offset", "labels", "rules"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RECORD_KEYS = {"record", "expr", "labels"}
"""The keys rulefmt takes: any other is an error for `promtool check rules`."""

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
"""Grafana's own interval variables, replaced by a duration as Grafana does before it sends a
panel's query, so that the query parses as PromQL."""

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _rules(path: Path) -> list[dict[str, Any]]:
    """The rules of a rule file, each checked against rulefmt's shape."""
    loaded = yaml.safe_load(path.read_text())
    assert set(loaded) == {"groups"}, path
    names = [group["name"] for group in loaded["groups"]]
    assert len(set(names)) == len(names), f"{path.name}: groups named twice"
    rules: list[dict[str, Any]] = []
    for group in loaded["groups"]:
        assert set(group) <= GROUP_KEYS and group["rules"], group["name"]
        for rule in group["rules"]:
            keys = ALERT_KEYS if "alert" in rule else RECORD_KEYS
            assert set(rule) <= keys and "expr" in rule, rule
            for duration in ("for", "keep_firing_for"):
                if duration in rule:
                    promql_parser.parse_duration(rule[duration])
            for mapping in ("labels", "annotations"):
                for key, value in rule.get(mapping, {}).items():
                    assert LABEL_NAME.match(key) and isinstance(value, str), (rule, key)
            rules.append(rule)
    return rules


def _selections(expr: str) -> list[tuple[str, set[str]]]:
    """Each metric an expression selects, with the labels it needs that metric to carry (those
    its selector matches, and those an enclosing `by (...)` groups by), as promql-parser parses
    it (a syntax error raises)."""
    for variable, duration in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, duration)
    found: list[tuple[str, set[str]]] = []

    def selected(node: Any) -> list[str]:
        names: list[str] = []
        promql_parser.walk(
            node,
            lambda n: names.append(n.name) if isinstance(n, promql_parser.VectorSelector) else None,
        )
        return names

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            found.append((node.name, {m.name for m in node.matchers.matchers}))
        elif (
            isinstance(node, promql_parser.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == promql_parser.AggModifierType.By
        ):
            found.extend((name, set(node.modifier.labels)) for name in selected(node.expr))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _metrics_named(expr: str) -> set[str]:
    """The metric names an expression selects."""
    return {name for name, _ in _selections(expr)}


def _assert_scraped(exprs: list[str], scrape: Scrape, *, sampled: bool = True) -> None:
    """Every metric the expressions select is in the scrape, and every label they match or
    group it by is on its samples. With `sampled`, each metric whose labels are used has
    samples there; without, a metric with none (a counter nothing has counted yet) has its
    labels left unchecked."""
    for expr in exprs:
        for name, labels in _selections(expr):
            assert name in scrape.names, f"{name} is not in /metrics ({expr})"
            if labels and (sampled or name in scrape.labels):
                carried = scrape.labels.get(name, set())
                assert labels <= carried, f"{name} has no label {labels - carried} ({expr})"


def _rule_exprs(path: Path) -> list[str]:
    return [rule["expr"] for rule in _rules(path)]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in _dashboard()["panels"] for t in panel["targets"]]


@dataclass(frozen=True)
class Scrape:
    names: set[str]
    """Every metric name the scrape shows, with or without samples: a counter's `_total`, a
    histogram's `_bucket`, `_count` and `_sum`."""
    labels: dict[str, set[str]]
    """The label names on each metric's samples."""


_FINISHED_JOBS = """
INSERT INTO jobs (job_id, account_id, url, status, step, created_at, updated_at, finished_at,
                  version, state)
VALUES ('done', 'acct', 'http://x', 'Completed', 'Finished', now(), now(), now(), 5,
        '{"timings": {"download": {"seconds": 3.0}, "mux": {"seconds": 2.0},
                      "upload": {"seconds": 1.0}}}'),
       ('failed', 'acct', 'http://x', 'Failed', 'Finished', now(), now(), now(), 3, '{}')
"""


@pytest.fixture(scope="module")
async def scrape(databases: Databases, redis_url: str) -> AsyncIterator[Scrape]:
    """A scrape of the API's /metrics over a log that holds a node, and a job that completed
    and one that failed, so that the families the rules match on have samples."""
    name, url = await databases.take()
    try:
        async with fresh_api(url, redis_url) as api:
            await append_node(
                api.store, api.runner, "node-1", node_started("node-1"), heartbeat("node-1")
            )
            await api.pool.execute(_FINISHED_JOBS)
            await api.runner.settle()
            answer = await api.client.get("/metrics", headers=api.admin())
    finally:
        databases.give_back(name)
    assert answer.status_code == 200, answer.text
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    yield Scrape(names, labels)


@pytest.mark.parametrize("path", [RULES, NODE_HEALTH_RULES], ids=lambda p: p.name)
def test_the_alert_rules_are_in_prometheus_rule_format_and_parse(path: Path) -> None:
    rules = _rules(path)
    alerts = [rule["alert"] for rule in rules]
    assert len(set(alerts)) == len(alerts)
    for rule in rules:
        assert _metrics_named(rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alert_rules_cover_what_an_operator_of_several_machines_is_woken_for() -> None:
    named = {m for path in (RULES, NODE_HEALTH_RULES) for r in _rules(path) for m in
             _metrics_named(r["expr"])}  # fmt: skip
    assert {
        "retire_cluster_devices_total",  # a node lost, none online
        "spool_projection_lag_seconds",
        "spool_queue_oldest_seconds",
        "spool_jobs_total",  # jobs failing
        "spool_lease_expiries_total",
        "spool_nodes",  # quarantined, below the disk floor
    } <= named


def test_every_metric_and_label_the_alert_rules_name_is_in_a_real_scrape(scrape: Scrape) -> None:
    _assert_scraped(_rule_exprs(RULES), scrape)


def test_every_metric_and_label_the_node_health_rules_name_is_in_a_real_scrape(
    scrape: Scrape,
) -> None:
    _assert_scraped(_rule_exprs(NODE_HEALTH_RULES), scrape, sampled=False)


def test_the_dashboard_is_grafana_json_whose_panels_query_a_chosen_prometheus() -> None:
    dashboard = _dashboard()
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["datasource"] == chosen and panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == chosen
            assert _metrics_named(target["expr"]), panel["title"]


def test_the_dashboard_shows_jobs_stages_throughput_lag_nodes_queue_age_and_leases() -> None:
    named = {m for expr in _dashboard_exprs() for m in _metrics_named(expr)}
    assert {
        "spool_jobs_total",
        "spool_stage_duration_seconds_bucket",  # stage durations
        "spool_stage_duration_seconds_count",  # throughput
        "spool_projection_lag_seconds",
        "retire_cluster_devices_total",  # nodes online
        "spool_nodes",  # nodes by state
        "spool_queue_oldest_seconds",
        "spool_lease_expiries_total",
    } <= named


def test_every_metric_and_label_the_dashboard_names_today_is_in_a_real_scrape(
    scrape: Scrape,
) -> None:
    today = [e for e in _dashboard_exprs() if not _metrics_named(e) & NODE_HEALTH]
    _assert_scraped(today, scrape)


def test_the_dashboards_node_health_panels_name_metrics_and_labels_in_a_real_scrape(
    scrape: Scrape,
) -> None:
    health = [e for e in _dashboard_exprs() if _metrics_named(e) & NODE_HEALTH]
    _assert_scraped(health, scrape, sampled=False)
