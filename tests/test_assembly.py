"""One assembly of the long-running parts (spool/assembly.py), used by `spool up`, `spool
reactors`, `spool worker`, the test cluster and the pipeline bench."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis

from spool.adapters.event_store import EventStore
from spool.adapters.queue import connect
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.assembly import NODE, REACTORS, Part, assemble
from spool.reactors.projection import ProjectionRunner
from spool.reactors.worker import Node


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    connection = await connect(redis_url)
    yield connection
    await connection.aclose()


def parts_of(
    names: tuple[str, ...],
    store: EventStore,
    runner: ProjectionRunner,
    redis: ArqRedis,
    tmp: Path,
    node_type: type[Node] = Node,
) -> dict[str, Part]:
    return assemble(
        store=store,
        redis=redis,
        storage=LocalStorage(tmp / "storage"),
        settings=Settings(data_dir=tmp),
        projections=runner,
        parts=names,
        node_type=node_type,
    )


async def test_spool_up_gets_every_reactor_and_a_node_by_name(
    store: EventStore, runner: ProjectionRunner, redis: ArqRedis, tmp_path: Path
) -> None:
    parts = parts_of((*REACTORS, NODE), store, runner, redis, tmp_path)
    assert list(parts) == [
        "projections",
        "pipeline",
        "scheduler",
        "reconciler",
        "viewer-timeouts",
        "operations",
        "subscriptions",
        "node",
    ]
    assert parts["projections"] is runner  # the runner the process also waits on
    assert isinstance(parts["node"], Node)


async def test_spool_worker_gets_only_the_node(
    store: EventStore, runner: ProjectionRunner, redis: ArqRedis, tmp_path: Path
) -> None:
    assert list(parts_of((NODE,), store, runner, redis, tmp_path)) == ["node"]


async def test_a_part_the_assembly_does_not_know_is_refused_by_name(
    store: EventStore, runner: ProjectionRunner, redis: ArqRedis, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no such part: webhooks"):
        parts_of(("projections", "webhooks"), store, runner, redis, tmp_path)


async def test_a_benchmark_gets_its_own_kind_of_node_from_the_same_assembly(
    store: EventStore, runner: ProjectionRunner, redis: ArqRedis, tmp_path: Path
) -> None:
    class NoopNode(Node):
        """A node whose stages would do no media work (bench/pipeline_noop.py)."""

    parts = parts_of((NODE,), store, runner, redis, tmp_path, node_type=NoopNode)
    assert type(parts["node"]) is NoopNode
