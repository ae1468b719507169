"""A drained node: it finishes what it runs and takes no new unit until an admin undrains it.

Downloads are the only new work a node takes by itself (from the shared download queue): while
drained its download worker picks nothing, and a download it took just before it learned of the
drain goes back to the queue for another node. Mux and upload stay on: they finish jobs this
node downloaded, whose files are here. Tasks are the scheduler's to place, and it gives a
draining node none (`domain.task.unmet`).
"""

from __future__ import annotations

import logging

from arq.worker import Retry

from spool.adapters.read_models import nodes
from spool.reactors.worker.outage import through_outage
from spool.reactors.worker.state import NodeState

log = logging.getLogger("spool.node")

HAND_BACK_DEFER = 1.0
"""Seconds a download handed back by a draining node waits in the queue: another node takes it
meanwhile, and this one has stopped picking by then."""


class Drain(NodeState):
    """Follows the node's drain (the `nodes` row) into what its download worker picks."""

    async def _check_drained(self) -> bool:
        """Read whether the node is drained and make the download worker pick accordingly;
        returns it. Called on every heartbeat and before each download starts."""
        drained = await nodes.draining(self.store.pool, self.node_id)
        if drained != self.draining:
            log.warning(
                "node %s %s",
                self.node_id,
                "drained: finishing what it runs, taking no new download"
                if drained
                else "undrained: taking downloads again",
            )
            self.draining = drained
        if self.downloads is not None and not self.stopping:
            self.downloads.allow_pick_jobs = not drained
        return drained

    async def _refuse_if_drained(self) -> None:
        """Hand a download back to its queue (arq `Retry`) when the node is drained; the read
        rides out a database outage, as the unit's own reads do."""
        if await through_outage(f"node {self.node_id}'s drain", self._check_drained):
            raise Retry(defer=HAND_BACK_DEFER)
