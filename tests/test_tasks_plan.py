"""The task aggregate and the scheduler's placement plan, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spool.domain import task
from spool.domain.errors import InvalidTransition
from spool.domain.node import Capabilities

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["gpu-capable", "ssd", "edge", "dev"]
PLATFORMS = ["linux", "windows", "darwin"]
ROLES = ["worker", "compute", "storage"]


def offer(node_id: str, **kw: object) -> task.NodeOffer:
    caps = {
        "cpu_count": 4,
        "memory_total_gb": 8.0,
        "storage_total_gb": 100.0,
        "has_gpu": False,
        "platform": "linux",
        "task_types": list(task.TASK_TYPES),
        "internet": True,
    }
    caps.update({k: v for k, v in kw.items() if k in caps})
    rest = {k: v for k, v in kw.items() if k not in caps}
    return task.NodeOffer(
        node_id=node_id,
        role=str(rest.get("role", "worker")),
        tags=list(rest.get("tags", [])),  # type: ignore[call-overload]
        capabilities=Capabilities(
            **{k: v for k, v in caps.items() if k not in ("task_types", "internet")}  # type: ignore[arg-type]
        ),
        task_types=list(caps["task_types"]),  # type: ignore[call-overload]
        internet=bool(caps["internet"]),
        slots=int(rest.get("slots", 2)),  # type: ignore[call-overload]
        busy=int(rest.get("busy", 0)),  # type: ignore[call-overload]
    )


def queued(
    task_id: str, priority: task.Priority = "normal", age: int = 0, **req: object
) -> task.QueuedTask:
    return task.QueuedTask(
        task_id=task_id,
        task_type=str(req.pop("task_type", "echo")),
        priority=priority,
        created_at=T0 + timedelta(seconds=age),
        requirements=task.Requirements(**req),  # type: ignore[arg-type]
    )


# -- requirements ----------------------------------------------------------------------------


def test_task_never_lands_on_a_node_without_its_tags() -> None:
    plain, tagged = offer("plain"), offer("tagged", tags=["gpu-capable"])
    result = task.plan([queued("t", required_tags=["gpu-capable"])], [plain, tagged])
    assert result.assignments == [task.Assignment("t", "tagged")]


def test_unmet_says_why_a_node_does_not_qualify() -> None:
    node = offer("n1", cpu_count=2, platform="linux", tags=["ssd"])
    assert task.unmet(task.Requirements(min_cpu_cores=8), node) == "has 2 CPU cores, needs 8"
    assert task.unmet(task.Requirements(required_platform="windows"), node) == (
        "runs linux, needs windows"
    )
    assert task.unmet(task.Requirements(required_tags=["ssd", "gpu-capable"]), node) == (
        "lacks tag gpu-capable"
    )
    assert task.unmet(task.Requirements(gpu_required=True), node) == "has no GPU"
    assert task.unmet(task.Requirements(required_tags=["ssd"]), node) is None
    no_eval = offer("n2", task_types=["echo"])
    assert task.unmet(task.Requirements(), no_eval, "python_eval") == (
        "does not run python_eval tasks"
    )


def test_a_task_no_node_meets_waits_with_the_reason() -> None:
    result = task.plan([queued("t", min_memory_gb=64)], [offer("small", memory_total_gb=8.0)])
    assert result.assignments == []
    assert result.waiting["t"] == (
        "No online node meets the requirements: small has 8 GB memory, needs 64"
    )
    assert task.plan([queued("t")], []).waiting["t"] == "No online node"


def test_a_full_node_gets_nothing_more() -> None:
    result = task.plan([queued("a"), queued("b", age=1)], [offer("n", slots=2, busy=1)])
    assert result.assignments == [task.Assignment("a", "n")]
    assert result.waiting["b"] == "Waiting for a free task slot on n"


def test_urgent_goes_before_older_normal_work() -> None:
    tasks = [queued("old-normal", "normal", age=0), queued("new-urgent", "urgent", age=5)]
    result = task.plan(tasks, [offer("n", slots=1)])
    assert result.assignments == [task.Assignment("new-urgent", "n")]


# -- the plan over random clusters -----------------------------------------------------------

requirements = st.builds(
    task.Requirements,
    min_cpu_cores=st.integers(0, 16),
    min_memory_gb=st.sampled_from([0.0, 2.0, 8.0, 32.0]),
    min_storage_gb=st.sampled_from([0.0, 50.0, 500.0]),
    required_platform=st.none() | st.sampled_from(PLATFORMS),
    required_role=st.none() | st.sampled_from(ROLES),
    required_tags=st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
    gpu_required=st.booleans(),
    internet_required=st.booleans(),
)

queued_tasks = st.lists(
    st.builds(
        task.QueuedTask,
        task_id=st.uuids().map(str),
        task_type=st.sampled_from(task.TASK_TYPES),
        priority=st.sampled_from(task.PRIORITIES),
        created_at=st.integers(0, 10_000).map(lambda s: T0 + timedelta(seconds=s)),
        requirements=requirements,
    ),
    max_size=25,
    unique_by=lambda t: t.task_id,
)

offers = st.lists(
    st.builds(
        task.NodeOffer,
        node_id=st.text("abcdefgh", min_size=1, max_size=6),
        role=st.sampled_from(ROLES),
        tags=st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
        capabilities=st.builds(
            Capabilities,
            cpu_count=st.integers(1, 32),
            memory_total_gb=st.sampled_from([1.0, 4.0, 16.0, 64.0]),
            storage_total_gb=st.sampled_from([10.0, 100.0, 1000.0]),
            has_gpu=st.booleans(),
            platform=st.sampled_from(PLATFORMS),
        ),
        task_types=st.lists(st.sampled_from(task.TASK_TYPES), max_size=6, unique=True),
        internet=st.booleans(),
        slots=st.integers(0, 3),
        busy=st.integers(0, 3),
    ),
    max_size=6,
    unique_by=lambda o: o.node_id,
)


@settings(max_examples=300, deadline=None)
@given(queued_tasks, offers)
def test_plan_only_uses_nodes_that_qualify_and_have_room(
    tasks: list[task.QueuedTask], nodes: list[task.NodeOffer]
) -> None:
    result = task.plan(tasks, nodes)
    by_task = {t.task_id: t for t in tasks}
    by_node = {n.node_id: n for n in nodes}
    given_to: dict[str, int] = {}
    for a in result.assignments:
        t, n = by_task[a.task_id], by_node[a.node_id]
        assert task.unmet(t.requirements, n, t.task_type) is None
        given_to[a.node_id] = given_to.get(a.node_id, 0) + 1
    for node_id, count in given_to.items():
        n = by_node[node_id]
        assert n.busy + count <= n.slots
    assigned = {a.task_id for a in result.assignments}
    assert len(assigned) == len(result.assignments)  # no task twice
    assert assigned | set(result.waiting) == set(by_task)  # every task placed or explained
    assert not assigned & set(result.waiting)


def _rank(t: task.QueuedTask) -> tuple[int, datetime, str]:
    return (-task.PRIORITY_RANK[t.priority], t.created_at, t.task_id)


@settings(max_examples=300, deadline=None)
@given(queued_tasks, offers)
def test_plan_honours_priority_then_age(
    tasks: list[task.QueuedTask], nodes: list[task.NodeOffer]
) -> None:
    """A waiting task never sees a later-ranked task take a node it could have used."""
    result = task.plan(tasks, nodes)
    by_task = {t.task_id: t for t in tasks}
    by_node = {n.node_id: n for n in nodes}
    for waiting_id in result.waiting:
        w = by_task[waiting_id]
        for a in result.assignments:
            later = by_task[a.task_id]
            if _rank(later) > _rank(w):
                assert task.unmet(w.requirements, by_node[a.node_id], w.task_type) is not None


# -- the aggregate ---------------------------------------------------------------------------


def _submitted(**req: object) -> task.TaskState:
    events = task.submit(
        task_id="t1",
        account_id="acc",
        task_type="echo",
        payload={"message": "hi"},
        requirements=task.Requirements(**req),  # type: ignore[arg-type]
    )
    state = task.fold([(e, T0, i + 1) for i, e in enumerate(events)])
    assert state is not None
    return state


def _apply(state: task.TaskState, events: list[object], at: datetime = T0) -> task.TaskState:
    for e in events:
        state = task.evolve(state, e, at, state.version + 1)  # type: ignore[arg-type]
    return state


def test_a_task_runs_from_queued_to_success() -> None:
    state = _submitted()
    assert state.status == "queued"
    state = _apply(state, task.assign(state, "n1"))
    assert (state.status, state.device_id, state.attempt) == ("assigned", "n1", 1)
    state = _apply(state, task.start(state, "n1", 1))
    state = _apply(state, task.succeed(state, "n1", 1, {"echo": {"message": "hi"}}, 0.01))
    assert state.status == "success" and state.result_data == {"echo": {"message": "hi"}}
    with pytest.raises(InvalidTransition):
        task.cancel(state)


def test_a_stale_attempt_cannot_start_or_finish() -> None:
    state = _submitted()
    state = _apply(state, task.assign(state, "n1"))
    state = _apply(state, task.unassign(state, "node went offline"))
    state = _apply(state, task.assign(state, "n2"))
    with pytest.raises(InvalidTransition):
        task.start(state, "n1", 1)
    assert task.start(state, "n2", 2)


def test_a_timeout_is_retried_while_max_retries_allows() -> None:
    state = _submitted(max_retries=1, timeout_seconds=5)
    state = _apply(state, task.assign(state, "n1"))
    state = _apply(state, task.start(state, "n1", 1))
    assert not task.overdue(state, T0 + timedelta(seconds=4))
    assert task.overdue(state, T0 + timedelta(seconds=5))
    state = _apply(state, task.time_out(state, 1))
    assert (state.status, state.retry_count) == ("queued", 1)
    state = _apply(state, task.assign(state, "n1"))
    state = _apply(state, task.start(state, "n1", 2))
    state = _apply(state, task.time_out(state, 2))
    assert state.status == "timeout"
    state = _apply(state, task.retry(state))
    assert (state.status, state.retry_count) == ("queued", 0)


def test_a_refusal_is_not_retried() -> None:
    state = _submitted(max_retries=3)
    state = _apply(state, task.assign(state, "n1"))
    state = _apply(state, task.start(state, "n1", 1))
    state = _apply(state, task.fail(state, "n1", 1, "not allowed here", retryable=False))
    assert state.status == "failed" and state.error == "not allowed here"


def test_submit_refuses_what_could_never_run() -> None:
    with pytest.raises(task.InvalidTask) as bad:
        task.submit(task_id="t", account_id="a", task_type="rm_rf")
    assert bad.value.field == "task_type"
    with pytest.raises(task.InvalidTask) as bad:
        task.submit(task_id="t", account_id="a", task_type="echo", priority="asap")
    assert bad.value.field == "priority"
    with pytest.raises(task.InvalidTask) as bad:
        task.submit(
            task_id="t",
            account_id="a",
            task_type="echo",
            requirements=task.Requirements(timeout_seconds=0),
        )
    assert bad.value.field == "requirements.timeout_seconds"
