"""What every fault test checks at its end: nothing accepted lost, nothing done twice."""

from __future__ import annotations

from collections.abc import Iterable

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.reactors.projection import ProjectionRunner
from spool.reactors.verify import Difference, verify
from tests.fixtures.audit import audit, summary
from tests.fixtures.cluster import Cluster


async def assert_nothing_lost(
    cluster: Cluster, jobs: Iterable[str], tasks: Iterable[str] = ()
) -> None:
    """Every accepted job and task ended, once; the bucket holds completed jobs' files only;
    the projections equal the fold of the log (`assert_log_and_bucket_clean`)."""
    url = cluster.settings.database_url
    assert url is not None
    await assert_log_and_bucket_clean(url, cluster.store, cluster.objects(), jobs, tasks)


async def assert_log_and_bucket_clean(
    database_url: str,
    store: EventStore,
    objects: Iterable[str],
    jobs: Iterable[str],
    tasks: Iterable[str] = (),
) -> None:
    """Every accepted job and task ended, once; `objects` (the bucket's keys, its `media/`
    prefix included) are completed jobs' files only; the projections equal the fold of the
    log (what `spool replay verify` runs, in-process here: a process of its own would cost
    each test seconds of imports)."""
    found = await audit(database_url, jobs, tasks, objects, prefix="media/")
    assert found.clean, summary(found)
    differences: list[Difference] = []
    runner = ProjectionRunner(store, all_projections())
    verified = await verify(store, runner, differences.append)
    assert verified.differences == 0, differences[:10]
    assert verified.checked["jobs"] >= len(found.jobs)
