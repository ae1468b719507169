"""A node's lease on a unit of work (domain/lease.py): granted by the unit's StageStarted,
renewed by each heartbeat of that node listing the unit, expired `ttl` after the last of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from spool.domain import job, lease
from spool.domain.node import NodeHeartbeat, Usage

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=15)
UNIT = job.arq_job_id("j1", 1, "download", 2)


def _started(node_id: str = "n1") -> lease.Lease:
    started = job.StageStarted(stage="download", run=1, attempt=2, node_id=node_id)
    return lease.granted("j1", started, T0, TTL)


def _beat(node_id: str, *running: str) -> NodeHeartbeat:
    usage = Usage(cpu_percent=0, memory_used=0, memory_total=1, disk_free=1, disk_total=1)
    return NodeHeartbeat(
        node_id=node_id,
        hostname=node_id,
        ip="198.18.0.2",
        downloading=len(running),
        muxing=0,
        uploading=0,
        running=list(running),
        usage=usage,
    )


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_stage_start_grants_its_node_a_lease_on_that_attempt_for_the_ttl() -> None:
    held = _started()
    assert (held.unit, held.node_id, held.granted_at) == (UNIT, "n1", T0)
    assert not lease.expired(held, _at(14.9))
    assert lease.expired(held, _at(15))


def test_a_unit_just_started_and_in_no_heartbeat_yet_keeps_its_lease() -> None:
    held = lease.renewed(_started(), _beat("n1"), _at(1))  # a beat made before the start
    assert not lease.expired(held, _at(10))


def test_each_heartbeat_of_the_node_listing_the_unit_renews_the_lease() -> None:
    held = _started()
    for second in (5, 10, 15, 20):
        held = lease.renewed(held, _beat("n1", "other", UNIT), _at(second))
    assert held.renewed_at == _at(20)
    assert not lease.expired(held, _at(34.9))
    assert lease.expired(held, _at(35))


def test_a_heartbeat_that_does_not_list_the_unit_renews_nothing() -> None:
    held = lease.renewed(_started(), _beat("n1", "other"), _at(10))
    assert held.renewed_at == T0
    assert lease.expired(held, _at(15))


def test_another_nodes_heartbeat_listing_the_unit_renews_nothing() -> None:
    held = lease.renewed(_started(), _beat("n2", UNIT), _at(10))
    assert lease.expired(held, _at(15))


def test_a_renewal_never_moves_the_lease_back() -> None:
    held = lease.renewed(_started(), _beat("n1", UNIT), _at(10))
    assert lease.renewed(held, _beat("n1", UNIT), _at(5)).renewed_at == _at(10)


def test_another_attempt_of_the_same_stage_is_another_unit_with_its_own_lease() -> None:
    first = lease.granted(
        "j1", job.StageStarted(stage="download", run=1, attempt=1, node_id="n1"), T0, TTL
    )
    held = lease.renewed(first, _beat("n1", UNIT), _at(10))  # lists attempt 2, not 1
    assert lease.expired(held, _at(15))
