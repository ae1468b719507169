"""`/user/keys`: an account's own API keys: list, create, revoke (an admin: every account's).

Answers in the job API's shape. A key never shows again after its creation; a new key never
holds more scope than the key that asks for it, and only an admin key creates admin keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post

from spool.adapters.event_store import EventStore
from spool.adapters.key_store import KeyRow, list_keys
from spool.api.auth import Principal
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application.keys import create_key, revoke_key


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /user/keys`: a name; a scope (`read`, `jobs`, `tasks`, `admin`, or a set such as
    `jobs,tasks`; default: the caller's own, `jobs,tasks` for an admin); an optional expiry."""

    name: str
    scope: str | None = None
    expires_at: datetime | None = None


class KeyList(msgspec.Struct):
    keys: list[KeyRow]


class CreatedKey(msgspec.Struct):
    key: str
    """The key itself: shown this once, only its digest is stored."""
    key_id: str
    name: str
    account_id: str
    scope: str
    expires_at: datetime | None
    message: str


class RevokedKey(msgspec.Struct):
    key_id: str
    revoked: bool
    message: str


class KeysController(Controller):
    path = "/user/keys"
    tags = ["user"]

    @get("/")
    async def list_own(self, services: Services, principal: Principal) -> KeyList:
        """Your account's keys (an admin: every account's), never the keys themselves."""
        store: EventStore = services.store
        owner = None if principal.admin else principal.account_id
        return KeyList(keys=await list_keys(store, owner))

    @post("/", status_code=201)
    async def create(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: NewKey,
        principal: Principal,
    ) -> CreatedKey:
        """A new key on your account; it is shown once, in this answer."""
        store: EventStore = services.store
        meta = command_metadata(request, f"key:{principal.key_id}")
        new = await create_key(
            store, principal, data.name, data.scope, data.expires_at, meta, now=datetime.now(UTC)
        )
        return CreatedKey(
            key=new.issued.key,
            key_id=new.issued.key_id,
            name=data.name.strip(),
            account_id=new.issued.account_id,
            scope=new.scope,
            expires_at=new.expires_at,
            message="Store this key now: it is not shown again",
        )

    @delete("/{key_id:str}", status_code=200)
    async def revoke_one(
        self, request: Request[Any, Any, Any], services: Services, key_id: str, principal: Principal
    ) -> RevokedKey:
        """Revoke one of your account's keys (an admin: any key); it stops working within 5 s."""
        store: EventStore = services.store
        meta = command_metadata(request, f"key:{principal.key_id}")
        done = await revoke_key(store, principal, key_id, meta)
        message = "Key revoked" if done else "Key was already revoked"
        return RevokedKey(key_id=key_id, revoked=True, message=message)
