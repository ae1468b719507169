"""A worker node: arq workers for its queues, the stage runner, and the heartbeat.

One process per node. Downloads come from the shared queue; mux and upload come from the node's
own queue, because the files are on its disk. Every second the node appends, in one batched
transaction, its heartbeat and each running stage's progress when it reached a new tenth, writes
every running stage's latest progress to `live_progress` (adapters/live_progress.py), then looks
for cancellations of what it runs.

One concern a module: `node.py` (the `Node` and its life, start to stop), `state.py` (what it
holds), `registration.py`, `heartbeat.py`, `stages_runner.py` (running a unit and recording its
result), `shutdown.py`, `arq_workers.py` (queues, limits, restarts), `entry_points.py` (the arq
functions), `outage.py` (appends that wait out a database outage), `unit.py` (`RunningUnit`).
"""

from spool.reactors.worker.node import Node
from spool.reactors.worker.unit import RunningUnit

__all__ = ["Node", "RunningUnit"]
