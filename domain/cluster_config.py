"""The cluster's config as events on the `config` stream: defaults, validation, the fold."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from spool.domain.aggregate import Aggregate, Step
from spool.domain.errors import DomainError
from spool.domain.events import Event, event

STREAM_ID = "config"


class InvalidConfig(DomainError):
    """A config value was refused; `field` names the one at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_connections: int = 100


class HeartbeatConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How often nodes beat (s), after how long without one a node is offline (s), and how
    many missed beats the cluster tolerates before it calls a node unhealthy."""

    interval: int = 1
    timeout: int = 30
    max_missed: int = 3


# (minimum, maximum) per field: a bound that keeps the cluster working, not a taste.
_SERVER_LIMITS: dict[str, tuple[float, float]] = {"max_connections": (1, 100_000)}
_HEARTBEAT_LIMITS: dict[str, tuple[float, float]] = {
    "interval": (1, 3600),
    "timeout": (1, 86_400),
    "max_missed": (1, 1000),
}


@event
class ServerConfigChanged(Event, frozen=True, kw_only=True):
    server: ServerConfig


@event
class HeartbeatConfigChanged(Event, frozen=True, kw_only=True):
    heartbeat: HeartbeatConfig


@event
class ConfigReset(Event, frozen=True, kw_only=True):
    """Every section back to its defaults."""


@event
class IntakePaused(Event, frozen=True, kw_only=True):
    """An admin paused the cluster's intake: no job that has not started starts, anywhere;
    work under way goes on (domain/pause.py)."""


@event
class IntakeResumed(Event, frozen=True, kw_only=True):
    """The cluster's intake is open again: waiting jobs are dispatched."""


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    version: int = 0
    intake_paused: bool = False
    """Not a setting (a reset leaves it): whether the cluster's intake is paused."""


SECTIONS: tuple[str, ...] = ("server", "heartbeat")


def stream_id(_: str = STREAM_ID) -> str:
    """The one stream that holds the cluster's config, whatever id is asked for."""
    return STREAM_ID


def evolve(state: ClusterConfig | None, ev: Event, at: datetime, version: int) -> ClusterConfig:
    """The config after one more event of its stream (None before: the defaults)."""
    if state is None:
        state = ClusterConfig()
    if isinstance(ev, ServerConfigChanged):
        return msgspec.structs.replace(state, server=ev.server, version=version)
    if isinstance(ev, HeartbeatConfigChanged):
        return msgspec.structs.replace(state, heartbeat=ev.heartbeat, version=version)
    if isinstance(ev, ConfigReset):
        return ClusterConfig(version=version, intake_paused=state.intake_paused)
    if isinstance(ev, IntakePaused | IntakeResumed):
        return msgspec.structs.replace(
            state, intake_paused=isinstance(ev, IntakePaused), version=version
        )
    return msgspec.structs.replace(state, version=version)


AGGREGATE: Aggregate[ClusterConfig] = Aggregate(
    name="config",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(
        ServerConfigChanged,
        HeartbeatConfigChanged,
        ConfigReset,
        IntakePaused,
        IntakeResumed,
    ),
    initial=ClusterConfig(),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types


def fold(events: Iterable[Step]) -> ClusterConfig:
    """The config after its stream's events (the defaults before any)."""
    return AGGREGATE.fold(events) or ClusterConfig()


def _checked(
    current: dict[str, Any], patch: dict[str, Any], limits: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """`current` with `patch` applied, every value of the right type and within its limits."""
    merged = dict(current)
    for field, value in patch.items():
        if field not in limits:
            known = ", ".join(sorted(limits))
            raise InvalidConfig(field, f"unknown field {field!r} (known: {known})")
        integral = isinstance(current[field], int)
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if integral else "a number"
            raise InvalidConfig(field, f"{field} must be {kind}")
        if integral and not float(value).is_integer():
            raise InvalidConfig(field, f"{field} must be an integer")
        low, high = limits[field]
        if not low <= value <= high:
            raise InvalidConfig(field, f"{field} must be between {low:g} and {high:g}")
        merged[field] = int(value) if integral else float(value)
    return merged


def change_server(state: ClusterConfig, patch: dict[str, Any]) -> list[Event]:
    """Set some server settings; the rest keep their values."""
    values = _checked(msgspec.structs.asdict(state.server), patch, _SERVER_LIMITS)
    server = ServerConfig(**values)
    return [] if server == state.server else [ServerConfigChanged(server=server)]


def change_heartbeat(state: ClusterConfig, patch: dict[str, Any]) -> list[Event]:
    """Set some heartbeat settings; a node must be able to miss a beat before it is offline."""
    values = _checked(msgspec.structs.asdict(state.heartbeat), patch, _HEARTBEAT_LIMITS)
    heartbeat = HeartbeatConfig(**values)
    if heartbeat.timeout <= heartbeat.interval:
        field = "timeout" if "timeout" in patch else "interval"
        raise InvalidConfig(field, "timeout must be longer than interval")
    return [] if heartbeat == state.heartbeat else [HeartbeatConfigChanged(heartbeat=heartbeat)]


def reset(state: ClusterConfig) -> list[Event]:
    """Back to defaults (recorded even when nothing differs: the admin asked for it)."""
    return [ConfigReset()]


def pause_intake(state: ClusterConfig) -> list[Event]:
    """Pause the cluster's intake of new work; nothing when it is paused already."""
    return [] if state.intake_paused else [IntakePaused()]


def resume_intake(state: ClusterConfig) -> list[Event]:
    """Open the cluster's intake again; nothing when it is open."""
    return [IntakeResumed()] if state.intake_paused else []


def as_dict(state: ClusterConfig) -> dict[str, dict[str, Any]]:
    """Every section by name, as the API shows it."""
    return {
        "server": msgspec.structs.asdict(state.server),
        "heartbeat": msgspec.structs.asdict(state.heartbeat),
    }
