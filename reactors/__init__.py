"""Background work that follows the log: projections, process managers, workers, heartbeats."""
