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
from spool.adapters.key_store import KeyRow, account_keys, issue, list_keys, owner_of, revoke
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.domain.account import (
    KEYS_PER_ACCOUNT,
    PLAIN_SCOPE,
    covers,
    parse_scope,
    room_for_a_key,
    scope_text,
)


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


def _may_manage(principal: Principal) -> None:
    """A key rotated out works through its grace, but makes and revokes no keys: the key that
    replaced it cannot be revoked (nor outlived) by the one it replaced."""
    if principal.replaced:
        raise JobApiError(
            status_code=403,
            detail="This key was rotated out: manage keys with the key that replaced it",
        )


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
        _may_manage(principal)
        default = PLAIN_SCOPE if principal.admin else principal.scope
        try:
            wanted = parse_scope(data.scope if data.scope is not None else default)
        except ValueError as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
        if not covers(principal.scopes, wanted):
            raise JobApiError(
                status_code=403,
                detail=f"A key with scope {principal.scope} cannot create a key with scope "
                f"{scope_text(wanted)}: a new key never holds more than the key that asks",
            )
        expires_at = data.expires_at
        if principal.expires_at is not None:
            # A key that expires cannot leave behind a key that outlives it.
            if expires_at is None:
                expires_at = principal.expires_at
            elif expires_at > principal.expires_at:
                raise JobApiError(
                    status_code=403,
                    detail="A new key cannot outlive the key that asks for it "
                    f"(it expires at {principal.expires_at.isoformat()})",
                )
        store: EventStore = services.store
        now = datetime.now(UTC)
        keys = await account_keys(store, principal.account_id)
        if not room_for_a_key(keys, now):
            raise JobApiError(
                status_code=409,
                detail=f"The account holds {KEYS_PER_ACCOUNT} working keys, the most it may: "
                "revoke one first",
            )
        try:
            issued = await issue(
                store,
                name=data.name,
                scope=scope_text(wanted),
                expires_at=expires_at,
                account_id=principal.account_id,
                meta=command_metadata(request, f"key:{principal.key_id}"),
                now=now,
            )
        except ValueError as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
        return CreatedKey(
            key=issued.key,
            key_id=issued.key_id,
            name=data.name.strip(),
            account_id=issued.account_id,
            scope=scope_text(wanted),
            expires_at=expires_at,
            message="Store this key now: it is not shown again",
        )

    @delete("/{key_id:str}", status_code=200)
    async def revoke_one(
        self, request: Request[Any, Any, Any], services: Services, key_id: str, principal: Principal
    ) -> RevokedKey:
        """Revoke one of your account's keys (an admin: any key); it stops working within 5 s."""
        _may_manage(principal)
        store: EventStore = services.store
        owner = await owner_of(store, key_id)
        # Another account's key is answered as an unknown one: ids tell nothing across accounts.
        if owner is None or not (principal.admin or owner == principal.account_id):
            raise JobApiError(status_code=404, detail=f"No key {key_id}")
        keys = await account_keys(store, owner)
        target = keys.get(key_id)
        if target is None:
            raise JobApiError(status_code=404, detail=f"No key {key_id}")
        if not covers(principal.scopes, parse_scope(target.scope)):
            raise JobApiError(
                status_code=403,
                detail=f"A key with scope {principal.scope} cannot revoke a key with scope "
                f"{target.scope}",
            )
        meta = command_metadata(request, f"key:{principal.key_id}")
        done = await revoke(store, owner, key_id, meta)
        message = "Key revoked" if done is not None else "Key was already revoked"
        return RevokedKey(key_id=key_id, revoked=True, message=message)
