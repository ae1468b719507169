"""Key commands of `/user/keys`: issue a key on the caller's account, revoke one.

A key never holds more scope than the key that asks for it, never outlives it, and a key
rotated out manages no keys (docs/architecture.md, "Tenancy").
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, Protocol

from spool.adapters.event_store import EventStore
from spool.adapters.key_store import IssuedKey, account_keys, issue, owner_of, revoke
from spool.domain.account import (
    KEYS_PER_ACCOUNT,
    PLAIN_SCOPE,
    covers,
    parse_scope,
    room_for_a_key,
    scope_text,
)
from spool.domain.errors import Conflict, Forbidden, InvalidCommand, NotFound
from spool.domain.events import Metadata


class KeyHolder(Protocol):
    """The key a command comes with (`api.auth.Principal` is one)."""

    @property
    def account_id(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def replaced(self) -> bool: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def admin(self) -> bool: ...


class NewKey(NamedTuple):
    """A key issued, with the scope and expiry it was given."""

    issued: IssuedKey
    scope: str
    expires_at: datetime | None


def _may_manage(caller: KeyHolder) -> None:
    """A key rotated out works through its grace, but makes and revokes no keys: the key that
    replaced it cannot be revoked (nor outlived) by the one it replaced."""
    if caller.replaced:
        raise Forbidden("This key was rotated out: manage keys with the key that replaced it")


async def create_key(
    store: EventStore,
    caller: KeyHolder,
    name: str,
    scope: str | None,
    expires_at: datetime | None,
    meta: Metadata,
    *,
    now: datetime,
) -> NewKey:
    """A new key on the caller's account: by default with the caller's scope (`jobs,tasks` for
    an admin) and, for a caller that expires, the caller's expiry."""
    _may_manage(caller)
    default = PLAIN_SCOPE if caller.admin else caller.scope
    try:
        wanted = parse_scope(scope if scope is not None else default)
    except ValueError as exc:
        raise InvalidCommand(str(exc)) from None
    if not covers(caller.scopes, wanted):
        raise Forbidden(
            f"A key with scope {caller.scope} cannot create a key with scope "
            f"{scope_text(wanted)}: a new key never holds more than the key that asks"
        )
    if caller.expires_at is not None:
        # A key that expires cannot leave behind a key that outlives it.
        if expires_at is None:
            expires_at = caller.expires_at
        elif expires_at > caller.expires_at:
            raise Forbidden(
                "A new key cannot outlive the key that asks for it "
                f"(it expires at {caller.expires_at.isoformat()})"
            )
    keys = await account_keys(store, caller.account_id)
    if not room_for_a_key(keys, now):
        raise Conflict(
            f"The account holds {KEYS_PER_ACCOUNT} working keys, the most it may: revoke one first"
        )
    try:
        issued = await issue(
            store,
            name=name,
            scope=scope_text(wanted),
            expires_at=expires_at,
            account_id=caller.account_id,
            meta=meta,
            now=now,
        )
    except ValueError as exc:
        raise InvalidCommand(str(exc)) from None
    return NewKey(issued, scope_text(wanted), expires_at)


async def revoke_key(store: EventStore, caller: KeyHolder, key_id: str, meta: Metadata) -> bool:
    """Revoke a key of the caller's account (an admin: any key); False if it already was."""
    _may_manage(caller)
    owner = await owner_of(store, key_id)
    # Another account's key is answered as an unknown one: ids tell nothing across accounts.
    if owner is None or not (caller.admin or owner == caller.account_id):
        raise NotFound(f"No key {key_id}")
    target = (await account_keys(store, owner)).get(key_id)
    if target is None:
        raise NotFound(f"No key {key_id}")
    if not covers(caller.scopes, parse_scope(target.scope)):
        raise Forbidden(
            f"A key with scope {caller.scope} cannot revoke a key with scope {target.scope}"
        )
    return await revoke(store, owner, key_id, meta) is not None
