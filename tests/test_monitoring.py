"""What operators load beside a cluster (deploy/): Prometheus alert rules and a Grafana
dashboard over the API's `GET /metrics`, written only over metrics a real scrape shows.

The rule files are checked against Prometheus's rule file format (rulefmt, what `promtool check
rules` reads: its groups, its rules' keys, its durations) and every expression, in the rules
and in the dashboard's panels, is parsed by promql-parser (the PromQL parser GreptimeDB
maintains in Rust, with Python bindings), which also names the metrics each one selects. Each
of those must be in a scrape of the API: a family without samples still prints its HELP and
TYPE lines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster_api_helpers import FreshApi

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "spool-rules.yml"
NODE_HEALTH_RULES = DEPLOY / "prometheus" / "spool-rules-node-health.yml"
DASHBOARD = DEPLOY / "grafana" / "spool-dashboard.json"

LANDING = frozenset({"spool_lease_expiries_total", "spool_nodes"})
"""Metrics the rules and the dashboard already use that the leases and node-health work adds
to /metrics: the checks over them are expected to fail until it has landed."""

LANDING_MARK = pytest.mark.xfail(strict=True, reason="metric lands with the leases/health branches")

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


def _metrics_named(expr: str) -> set[str]:
    """The metric names an expression selects, as promql-parser parses it (a syntax error
    raises)."""
    for variable, duration in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, duration)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in _dashboard()["panels"] for t in panel["targets"]]


@pytest.fixture(scope="module")
async def exported(module_api: FreshApi) -> set[str]:
    """Every metric name a scrape of the API's /metrics shows, with or without samples: a
    counter's `_total`, a histogram's `_bucket`, `_count` and `_sum`."""
    answer = await module_api.client.get("/metrics", headers=module_api.admin())
    assert answer.status_code == 200, answer.text
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    for family in text_string_to_metric_families(answer.text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


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


def test_every_metric_the_alert_rules_name_is_in_a_real_scrape(exported: set[str]) -> None:
    named = {m for rule in _rules(RULES) for m in _metrics_named(rule["expr"])}
    assert named - exported == set()


@LANDING_MARK
def test_every_metric_the_node_health_rules_name_is_in_a_real_scrape(
    exported: set[str],
) -> None:
    named = {m for rule in _rules(NODE_HEALTH_RULES) for m in _metrics_named(rule["expr"])}
    assert named - exported == set()


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


def test_every_metric_the_dashboard_names_today_is_in_a_real_scrape(exported: set[str]) -> None:
    named = {m for expr in _dashboard_exprs() for m in _metrics_named(expr)}
    assert named - LANDING - exported == set()


@LANDING_MARK
def test_the_dashboards_node_health_panels_name_metrics_in_a_real_scrape(
    exported: set[str],
) -> None:
    assert LANDING - exported == set()
