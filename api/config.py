"""`/api/v1/config`: the cluster's config, changed only by appending events (admin only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import Provide

from spool.adapters.config_store import change_config, load_config
from spool.adapters.event_store import EventStore
from spool.api.auth import Principal
from spool.api.envelope import (
    Envelope,
    cluster_admin,
    success,
    validation_error,
)
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.domain import cluster_config as config
from spool.domain.events import Event


async def _change(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    decide: Callable[[config.ClusterConfig], list[Event]],
) -> config.ClusterConfig:
    store: EventStore = services.store
    meta = command_metadata(request, f"key:{principal.key_id}")
    try:
        state, _ = await change_config(store, decide, meta)
    except config.InvalidConfig as exc:
        raise validation_error(exc.field, exc.message) from None
    return state


class ConfigView(msgspec.Struct):
    """Every config section, and the version of the `config` stream it was folded at."""

    server: config.ServerConfig
    heartbeat: config.HeartbeatConfig
    version: int


def config_view(state: config.ClusterConfig) -> ConfigView:
    """The whole config as `/api/v1/config` answers it."""
    return ConfigView(server=state.server, heartbeat=state.heartbeat, version=state.version)


class IntakeView(msgspec.Struct):
    """Whether the cluster's intake of new work is paused (domain/pause.py)."""

    paused: bool


def _patch(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        raise validation_error("body", "send a JSON object with the settings to change")
    return data


class ConfigController(Controller):
    path = "/config"
    dependencies = {"principal": Provide(cluster_admin)}
    tags = ["cluster: config"]

    @get("/")
    async def everything(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[ConfigView]]:
        """Every config section, and the version of the `config` stream it was folded at."""
        state = await load_config(services.store)
        return success(request, config_view(state))

    @get("/server")
    async def server(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[config.ServerConfig]]:
        state = await load_config(services.store)
        return success(request, state.server)

    @put("/server")
    async def set_server(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: dict[str, Any],
    ) -> Response[Envelope[config.ServerConfig]]:
        """Change server settings (e.g. `max_connections`); fields left out keep their values."""
        patch = _patch(data)
        state = await _change(
            request, services, principal, lambda s: config.change_server(s, patch)
        )
        return success(request, state.server, message="Server config updated")

    @get("/heartbeat")
    async def heartbeat(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[config.HeartbeatConfig]]:
        state = await load_config(services.store)
        return success(request, state.heartbeat)

    @put("/heartbeat")
    async def set_heartbeat(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: dict[str, Any],
    ) -> Response[Envelope[config.HeartbeatConfig]]:
        """Change `interval`, `timeout` (after which a device is offline) and `max_missed`."""
        patch = _patch(data)
        state = await _change(
            request, services, principal, lambda s: config.change_heartbeat(s, patch)
        )
        return success(request, state.heartbeat, message="Heartbeat config updated")

    @post("/reset", status_code=200)
    async def reset(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[ConfigView]]:
        """Every section back to its defaults."""
        state = await _change(request, services, principal, config.reset)
        return success(request, config_view(state), message="Configuration reset to defaults")

    @get("/intake")
    async def intake(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[IntakeView]]:
        """Whether the cluster's intake of new work is paused."""
        state = await load_config(services.store)
        return success(request, IntakeView(paused=state.intake_paused))

    @post("/intake/pause", status_code=200)
    async def pause_intake(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[IntakeView]]:
        """Pause the cluster's intake: no job that has not started starts, on any node; work
        under way goes on to its end. Twice: nothing more."""
        state = await _change(request, services, principal, config.pause_intake)
        return success(request, IntakeView(paused=state.intake_paused), message="Intake paused")

    @post("/intake/resume", status_code=200)
    async def resume_intake(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[IntakeView]]:
        """Open the cluster's intake again: the jobs waiting are dispatched."""
        state = await _change(request, services, principal, config.resume_intake)
        return success(request, IntakeView(paused=state.intake_paused), message="Intake resumed")
