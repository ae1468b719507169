"""Pause and resume at four levels: one job, a batch, an account, the cluster's intake.

A job's own pause is on its stream (`job.JobPaused`, `job.JobResumed`). The others are events
of their own aggregates (`batch.BatchPaused`, `account_policy.AccountPaused`,
`cluster_config.IntakePaused`, and their resumes), which the `pauses` projection keeps as one
row per paused scope (adapters/read_models/pauses.py). `paused_by` is the one rule over both.

What each holds back differs: a job's own pause stops its next stage, whichever it is (a running
one finishes); a batch's, an account's or the cluster's holds back only jobs whose run has not
started (status Pending): their downloads wait, and work already under way goes on to its end.
"""

from __future__ import annotations

from collections.abc import Collection

from spool.domain import job

Scope = tuple[job.PausedBy, str]
"""One paused scope: its kind and id (`("batch", batch_id)`, `("cluster", CLUSTER)`)."""

CLUSTER = "intake"
"""The id of the cluster's one scope: its intake of new work."""


def scopes(account_id: str, batch_id: str | None) -> list[Scope]:
    """The scopes whose pause would hold back a job of this account and batch, narrowest
    first."""
    found: list[Scope] = []
    if batch_id is not None:
        found.append(("batch", batch_id))
    found.append(("account", account_id))
    found.append(("cluster", CLUSTER))
    return found


def scopes_of(state: job.JobState) -> list[Scope]:
    """The scopes whose pause would hold this job back, narrowest first."""
    return scopes(state.account_id, state.batch_id)


def paused_by(state: job.JobState, paused: Collection[Scope] = ()) -> job.PausedBy | None:
    """What holds the job's next stage back, given the scopes paused now; None: it may start.

    A finished job is held by nothing; a held job of an unstarted batch waits for its batch's
    start, which is not a pause.
    """
    if state.terminal or state.held:
        return None
    if state.paused:
        return "job"
    if state.status != "Pending":
        return None  # under way: only the job's own pause stops it between stages
    for scope in scopes_of(state):
        if scope in paused:
            return scope[0]
    return None


def may_start(state: job.JobState, paused: Collection[Scope] = ()) -> bool:
    """Whether the job's current unit waits to be started and nothing holds it back: what a
    lifted pause dispatches (not finished, not held for its batch's start, not under way)."""
    waits = not (state.terminal or state.held or state.unit_started)
    return waits and paused_by(state, paused) is None
