"""A node telling the cluster who it is: at start, and again after an admin removed it."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from spool.adapters import sysinfo
from spool.adapters.node_store import nodes
from spool.adapters.read_models import nodes as node_rows
from spool.domain import node
from spool.domain.events import Event
from spool.reactors.task_types import advertised, has_internet
from spool.reactors.worker.state import NodeState

log = logging.getLogger("spool.node")


class Registration(NodeState):
    """The node's own stream: `NodeStarted`, and whether an admin removed the node since."""

    async def _register(self) -> None:
        """Tell the cluster who this node is (at start, and again after an admin removed it)."""
        await self._append_node(
            node.NodeStarted(
                node_id=self.node_id,
                hostname=self.hostname,
                ip=self.ip,
                role=self.settings.role,
                tags=list(self.settings.tags),
                capabilities=msgspec.structs.replace(
                    sysinfo.capabilities(self.workroot, ["download", "mux", "upload"]),
                    task_types=advertised(self.settings),
                    internet=has_internet(),
                ),
                concurrency={
                    "download": self.settings.download_concurrency,
                    "mux": self.settings.mux_concurrency,
                    "upload": self.settings.upload_concurrency,
                    "task": self.settings.task_concurrency,
                },
            )
        )

    async def _removed_at(self) -> Any:
        """When an admin last removed this node, if the `nodes` projection says so."""
        return await node_rows.removed_at(self.store.pool, self.node_id)

    async def _check_removed(self) -> None:
        """Register again after a removal: heartbeats alone never bring a removed node back."""
        removed_at = await self._removed_at()
        if removed_at is not None and removed_at != self._removal_seen:
            self._removal_seen = removed_at
            log.warning("node %s was removed from the cluster: registering again", self.node_id)
            await self._register()

    async def _append_node(self, ev: Event) -> None:
        await nodes(self.store).record(self.node_id, [ev], self.meta)
