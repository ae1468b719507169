"""`/admin/accounts` (admin keys only, the job API's error shape): every account with its keys,
its grant of code-running tasks, its quotas, its share of the download slots and whether it is
paused; set quotas, share, grant and revoke, pause and resume.

Answers are read from the account streams, so a change shows at once.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import Provide

from spool.adapters.account_policy_store import accounts, load_policy, record
from spool.api.auth import Principal, job_api_admin
from spool.api.bodies import READS_BODY
from spool.api.errors import JobApiError
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.domain import account_policy
from spool.domain.account_policy import AccountPolicy, InvalidPolicy, Quotas
from spool.domain.fair_share import priority_word


class QuotasBody(Quotas, frozen=True, forbid_unknown_fields=True):
    """The account's quotas, all of them: a field left out or null is unlimited."""


class GrantBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`task_types`: of command, python_eval, http_request (default all three); `env`: node
    environment variables the account's tasks may name in `payload.env`."""

    task_types: list[str] = msgspec.field(default_factory=list)
    env: list[str] = msgspec.field(default_factory=list)


class ShareBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`weight`: the account's share of the download slots against other accounts with jobs
    waiting (1 to 1000, default 1); `default_priority`: what its jobs that ask for none take
    (low, normal, high or -100 to 100)."""

    weight: int = 1
    default_priority: str | int = "normal"


class ShareView(msgspec.Struct):
    weight: int
    default_priority: str | int


class AccountView(msgspec.Struct):
    account_id: str
    keys: list[dict[str, Any]]
    grant: account_policy.Grant | None
    quotas: Quotas
    share: ShareView
    paused: bool = False
    """Paused by an admin: the account's jobs that have not started wait (domain/pause.py)."""


def _decode(raw: bytes, kind: type[Any]) -> Any:
    """The body, strictly decoded; a 400 naming the field at fault."""
    try:
        return msgspec.json.decode(raw or b"{}", type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise JobApiError(status_code=400, detail=f"Invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise JobApiError(status_code=400, detail=f"The body is not valid JSON: {exc}") from None


async def _policy(services: Services, account_id: str) -> AccountPolicy:
    found = await load_policy(services.store, account_id)
    if found is None:
        raise JobApiError(status_code=404, detail=f"Account {account_id!r} not found")
    return found


async def _keys_of(services: Services, account_id: str) -> list[dict[str, Any]]:
    found = await accounts(services.pool, account_id)
    return found[0].keys if found else []


def _view(policy: AccountPolicy, keys: list[dict[str, Any]]) -> AccountView:
    share = ShareView(policy.share.weight, priority_word(policy.share.default_priority))
    return AccountView(policy.account_id, keys, policy.grant, policy.quotas, share, policy.paused)


def _bad(exc: InvalidPolicy) -> JobApiError:
    return JobApiError(status_code=400, detail=f"{exc} (field: {exc.field})")


class AdminAccountsController(Controller):
    path = "/admin/accounts"
    dependencies = {"admin": Provide(job_api_admin)}
    tags = ["admin"]

    @get("/")
    async def list_accounts(
        self, services: Services, admin: Principal
    ) -> dict[str, list[AccountView]]:
        """Every account that has a key: its keys (ids, names; never a secret), grant, quotas."""
        answer = []
        for row in await accounts(services.pool):
            policy = await load_policy(services.store, row.account_id)
            answer.append(_view(policy or AccountPolicy(account_id=row.account_id), row.keys))
        return {"accounts": answer}

    @get("/{account_id:str}")
    async def get_account(
        self, services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """One account's keys, grant and quotas; 404 for an unknown account."""
        policy = await _policy(services, account_id)
        return _view(policy, await _keys_of(services, account_id))

    @put("/{account_id:str}/quotas", status_code=200, opt=READS_BODY)
    async def set_quotas(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Replace the account's quotas: `max_running_jobs`, `max_jobs_per_day`,
        `max_storage_bytes`, `max_media_seconds` (a whole number; left out or null: unlimited)
        and `min_subscription_interval` (seconds; null: the cluster's minimum)."""
        body: QuotasBody = _decode(await request.body(), QuotasBody)
        await _policy(services, account_id)
        quotas = Quotas(**msgspec.structs.asdict(body))
        try:
            events = account_policy.set_quotas(account_id, quotas)
        except InvalidPolicy as exc:
            raise _bad(exc) from None
        await record(services.store, account_id, events, command_metadata(request, admin.key_id))
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))

    @put("/{account_id:str}/share", status_code=200, opt=READS_BODY)
    async def set_share(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Set the account's share of the download slots: `weight` and `default_priority`
        (fields left out take their defaults: 1 and normal)."""
        body: ShareBody = _decode(await request.body(), ShareBody)
        await _policy(services, account_id)
        try:
            events = account_policy.set_share(account_id, body.weight, body.default_priority)
        except InvalidPolicy as exc:
            raise _bad(exc) from None
        await record(services.store, account_id, events, command_metadata(request, admin.key_id))
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))

    @put("/{account_id:str}/grants", status_code=200, opt=READS_BODY)
    async def grant(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Let the account run code-running tasks (replaces any earlier grant)."""
        body: GrantBody = _decode(await request.body(), GrantBody)
        await _policy(services, account_id)
        try:
            events = account_policy.grant(account_id, body.task_types, body.env)
        except InvalidPolicy as exc:
            raise _bad(exc) from None
        await record(services.store, account_id, events, command_metadata(request, admin.key_id))
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))

    @delete("/{account_id:str}/grants", status_code=200)
    async def revoke_grant(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Take the account's grant back: its queued code-running tasks will not run."""
        policy = await _policy(services, account_id)
        await record(
            services.store,
            account_id,
            account_policy.revoke(policy),
            command_metadata(request, admin.key_id),
        )
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))

    @post("/{account_id:str}/pause", status_code=200)
    async def pause_account(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Pause the account: its jobs that have not started wait; running ones go on to their
        end, through mux and upload. Twice: nothing more."""
        policy = await _policy(services, account_id)
        meta = command_metadata(request, admin.key_id)
        await record(services.store, account_id, account_policy.pause(policy), meta)
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))

    @post("/{account_id:str}/resume", status_code=200)
    async def resume_account(
        self, request: Request[Any, Any, Any], services: Services, admin: Principal, account_id: str
    ) -> AccountView:
        """Lift the account's pause: its waiting jobs are dispatched."""
        policy = await _policy(services, account_id)
        meta = command_metadata(request, admin.key_id)
        await record(services.store, account_id, account_policy.resume(policy), meta)
        return _view(await _policy(services, account_id), await _keys_of(services, account_id))
