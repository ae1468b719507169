"""What new work a node takes by itself: none while drained, quarantined or short of disk.

Downloads are the only new work a node takes by itself (from the shared download queue). Its
download worker picks nothing while an admin drained the node, while the node is quarantined
(units failed in a row on it: domain/node_health.py), or while its free disk is below its floor
(`Settings.disk_floor`, which its heartbeat reports). A download it took just before it learned
of any of these goes back to the queue for another node. Mux and upload stay on: they finish
jobs this node downloaded, whose files are here. Tasks are the scheduler's to place, and it
gives a draining or quarantined node none (`domain.task.unmet`).

A quarantined node takes one probe: `quarantine_probe_interval` seconds after its quarantine,
and after its previous probe began, its download worker picks again; the first download it
takes is recorded as its probe (`NodeProbeStarted`) and it picks nothing more. The node health
reactor releases the node when that job's run completes here, mux and upload included
(reactors/node_health.py); when it fails, the node stays quarantined and probes again an
interval later.
"""

from __future__ import annotations

import logging
import time

from arq.worker import Retry

from spool.adapters import sysinfo
from spool.adapters.node_store import nodes
from spool.adapters.queue import DOWNLOAD_QUEUE
from spool.adapters.read_models import nodes as node_rows
from spool.domain import node, node_health
from spool.reactors.worker.outage import through_outage
from spool.reactors.worker.state import NodeState

log = logging.getLogger("spool.node")

HAND_BACK_DEFER = 1.0
"""Seconds a download handed back by a node that takes none waits in the queue: another node
takes it meanwhile, and this one has stopped picking by then."""


class Drain(NodeState):
    """Follows the node's drain, quarantine and disk into what its download worker picks."""

    async def _follow_health(self, gate: node_rows.Gate | None = None) -> bool:
        """Read the node's drain and quarantine (unless given, just read), measure its disk, and
        make the download worker pick accordingly; returns whether the node takes no new
        download now. Called on every heartbeat and before each download starts."""
        if gate is None:
            gate = await node_rows.gate(self.store.pool, self.node_id)
        free, total = sysinfo.disk_space(self.workroot)
        self.disk_floor = node_health.below_disk_floor(free, total, self.floor)
        probe = gate.quarantined_since is not None and self._probe_due(gate)
        refusing = (
            "drained"
            if gate.draining
            else "quarantined"
            if gate.quarantined_since is not None and not probe
            else f"below its disk floor ({self.disk_floor})"
            if self.disk_floor is not None
            else None
        )
        if refusing != self.refusing:
            log.warning(
                "node %s %s",
                self.node_id,
                f"{refusing}: finishing what it runs, taking no new download"
                if refusing
                else "taking downloads" + (" again: one probe unit" if probe else " again"),
            )
            self.refusing = refusing
        self.quarantined = gate.quarantined_since is not None
        if self.downloads is not None and not self.stopping:
            self.downloads.allow_pick_jobs = refusing is None
            if refusing is None:
                self.wakes[DOWNLOAD_QUEUE].set()  # what queued meanwhile need not wait the poll
        return refusing is not None

    def _probe_due(self, gate: node_rows.Gate) -> bool:
        interval = self.settings.quarantine_probe_interval
        if self._probe_taken is not None and time.monotonic() - self._probe_taken < interval:
            return False  # this process's own probe, which the `nodes` row may not show yet
        assert gate.quarantined_since is not None and gate.now is not None
        return node_health.probe_due(
            gate.quarantined_since, gate.probe_started_at, gate.now, interval
        )

    async def _refuse_new_download(
        self, unit: str, job_id: str, run: int, gate: node_rows.Gate | None = None
    ) -> None:
        """Hand a download back to its queue (arq `Retry`) when the node takes none now; when it
        is quarantined and due a probe, take this one as its probe. `gate`: the node's gate if
        just read (with the job); the reads ride out a database outage, as the unit's own do."""
        if await through_outage(f"node {self.node_id}'s health", lambda: self._follow_health(gate)):
            raise Retry(defer=HAND_BACK_DEFER)
        if not self.quarantined:
            return
        self._probe_taken = time.monotonic()
        if self.downloads is not None:
            self.downloads.allow_pick_jobs = False  # one probe at a time
        await through_outage(
            f"node {self.node_id}'s probe",
            lambda: nodes(self.store).execute(
                self.node_id, lambda s: node.start_probe(s, unit, job_id, run), self.meta
            ),
        )
        log.warning("node %s is quarantined: unit %s is its probe", self.node_id, unit)
