"""`/api/v1/config`: the cluster's config, changed only by appending events (admin only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, Response, get, post, put
from litestar.di import Provide

from adapters.config_store import change_config, load_config
from adapters.event_store import EventStore
from api.auth import Principal
from api.envelope import CLUSTER_API_ERRORS, cluster_admin, success, validation_error
from api.requests import command_metadata
from domain import cluster_config as config
from domain.events import Event


async def _change(
    request: Request[Any, Any, Any],
    principal: Principal,
    decide: Callable[[config.ClusterConfig], list[Event]],
) -> config.ClusterConfig:
    store: EventStore = request.app.state.store
    meta = command_metadata(request, f"key:{principal.key_id}")
    try:
        state, _ = await change_config(store, decide, meta)
    except config.InvalidConfig as exc:
        raise validation_error(exc.field, exc.message) from None
    return state


def _patch(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        raise validation_error("body", "send a JSON object with the settings to change")
    return data


class ConfigController(Controller):
    path = "/api/v1/config"
    dependencies = {"principal": Provide(cluster_admin)}
    exception_handlers = CLUSTER_API_ERRORS  # type: ignore[assignment]
    tags = ["cluster: config"]

    @get("/")
    async def everything(
        self, request: Request[Any, Any, Any], principal: Principal
    ) -> Response[Any]:
        """Every config section, and the version of the `config` stream it was folded at."""
        state = await load_config(request.app.state.store)
        return success(request, {**config.as_dict(state), "version": state.version})

    @get("/server")
    async def server(self, request: Request[Any, Any, Any], principal: Principal) -> Response[Any]:
        state = await load_config(request.app.state.store)
        return success(request, config.as_dict(state)["server"])

    @put("/server")
    async def set_server(
        self, request: Request[Any, Any, Any], principal: Principal, data: dict[str, Any]
    ) -> Response[Any]:
        """Change server settings (e.g. `max_connections`); fields left out keep their values."""
        patch = _patch(data)
        state = await _change(request, principal, lambda s: config.change_server(s, patch))
        return success(request, config.as_dict(state)["server"], message="Server config updated")

    @get("/heartbeat")
    async def heartbeat(
        self, request: Request[Any, Any, Any], principal: Principal
    ) -> Response[Any]:
        state = await load_config(request.app.state.store)
        return success(request, config.as_dict(state)["heartbeat"])

    @put("/heartbeat")
    async def set_heartbeat(
        self, request: Request[Any, Any, Any], principal: Principal, data: dict[str, Any]
    ) -> Response[Any]:
        """Change `interval`, `timeout` (after which a device is offline) and `max_missed`."""
        patch = _patch(data)
        state = await _change(request, principal, lambda s: config.change_heartbeat(s, patch))
        return success(
            request, config.as_dict(state)["heartbeat"], message="Heartbeat config updated"
        )

    @post("/reset", status_code=200)
    async def reset(self, request: Request[Any, Any, Any], principal: Principal) -> Response[Any]:
        """Every section back to its defaults."""
        state = await _change(request, principal, config.reset)
        return success(
            request,
            {**config.as_dict(state), "version": state.version},
            message="Configuration reset to defaults",
        )
