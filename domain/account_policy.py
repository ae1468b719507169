"""What an admin allows one account: a grant to run code-running tasks, quotas, and its share.

Both are events on the account's own stream (`domain.account.stream_id`), set only by an admin;
the account's policy is the fold of them (other events on that stream are ignored here).
No quota set means no limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import msgspec

from spool.domain.account import stream_id
from spool.domain.aggregate import Aggregate
from spool.domain.errors import DomainError
from spool.domain.events import Event, event
from spool.domain.fair_share import MAX_WEIGHT, InvalidPriority, parse_priority

CODE_TASK_TYPES: tuple[str, ...] = ("command", "python_eval", "http_request")
"""Task types that run code or reach the network on a node: an admin key or a grant only."""

ADMIN_PRIORITIES: frozenset[str] = frozenset({"urgent"})
"""Priorities above `high`: they jump every other account's queue, so an admin key only."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV_NAMES = 64


class PolicyRefused(DomainError):
    """A request the account's policy does not allow; `field` names what was refused."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class InvalidPolicy(DomainError):
    """A value that is not a valid grant, quota or variable list; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class Quotas(msgspec.Struct, frozen=True, kw_only=True):
    """An account's limits; None is unlimited."""

    max_running_jobs: int | None = None
    """Jobs created and not yet finished (Completed, Failed or Cancelled) at once."""
    max_jobs_per_day: int | None = None
    """Jobs created in one UTC day."""
    max_storage_bytes: int | None = None
    """Bytes held in storage: uploaded minus deleted."""
    max_media_seconds: int | None = None
    """The longest media (in seconds) a job may fetch."""
    min_subscription_interval: int | None = None
    """The shortest interval (seconds) its subscriptions may ask for; None: the cluster's
    `SPOOL_SUBSCRIPTION_MIN_INTERVAL` (5 minutes)."""


QUOTA_NAMES: tuple[str, ...] = tuple(Quotas.__struct_fields__)


@event
class CodeTasksGranted(Event, frozen=True, kw_only=True):
    """An admin let the account run code-running task types; `env` names the node environment
    variables its tasks may ask to see."""

    account_id: str
    task_types: list[str]
    env: list[str] = msgspec.field(default_factory=list)


@event
class CodeTasksRevoked(Event, frozen=True, kw_only=True):
    account_id: str


@event
class QuotasSet(Event, frozen=True, kw_only=True):
    """An admin replaced the account's quotas (a field left None is unlimited)."""

    account_id: str
    quotas: Quotas = Quotas()


class Share(msgspec.Struct, frozen=True, kw_only=True):
    """An account's place in the fair shares of the cluster's download slots
    (domain/fair_share.py): its weight against other accounts with jobs waiting, and the
    priority its jobs take when they ask for none."""

    weight: int = 1
    default_priority: int = 0


@event
class ShareSet(Event, frozen=True, kw_only=True):
    """An admin set the account's share."""

    account_id: str
    share: Share = Share()


@event
class AccountPaused(Event, frozen=True, kw_only=True):
    """An admin paused the account: its jobs that have not started wait (domain/pause.py)."""

    account_id: str


@event
class AccountResumed(Event, frozen=True, kw_only=True):
    """The account's pause was lifted: its waiting jobs are dispatched."""

    account_id: str


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    task_types: list[str]
    env: list[str]


class AccountPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """An account's grant (None: none) and quotas, as the account stream has them."""

    account_id: str
    grant: Grant | None = None
    quotas: Quotas = Quotas()
    share: Share = Share()
    updated_at: datetime | None = None
    paused: bool = False
    """Paused by an admin (`AccountPaused`): its jobs that have not started wait."""


def evolve(
    state: AccountPolicy | None, ev: Event, at: datetime, version: int
) -> AccountPolicy | None:
    """Apply one event of the account stream; events that are not policy leave it unchanged
    (None: the account has had no policy event yet)."""
    if not isinstance(
        ev,
        CodeTasksGranted | CodeTasksRevoked | QuotasSet | ShareSet | AccountPaused | AccountResumed,
    ):
        return state
    if state is None:
        state = AccountPolicy(account_id=ev.account_id)
    if isinstance(ev, AccountPaused | AccountResumed):
        return msgspec.structs.replace(state, paused=isinstance(ev, AccountPaused), updated_at=at)
    if isinstance(ev, CodeTasksGranted):
        grant = Grant(task_types=list(ev.task_types), env=list(ev.env))
        return msgspec.structs.replace(state, grant=grant, updated_at=at)
    if isinstance(ev, CodeTasksRevoked):
        return msgspec.structs.replace(state, grant=None, updated_at=at)
    if isinstance(ev, ShareSet):
        return msgspec.structs.replace(state, share=ev.share, updated_at=at)
    return msgspec.structs.replace(state, quotas=ev.quotas, updated_at=at)


AGGREGATE: Aggregate[AccountPolicy] = Aggregate(
    name="account_policy",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(
        CodeTasksGranted,
        CodeTasksRevoked,
        QuotasSet,
        ShareSet,
        AccountPaused,
        AccountResumed,
    ),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types
"""The names of the policy's events on the account stream."""

fold = AGGREGATE.fold
"""The policy of an account from its stream's events, oldest first (None: no policy event)."""


def _env_names(names: Sequence[object], field: str) -> list[str]:
    if len(names) > MAX_ENV_NAMES:
        raise InvalidPolicy(field, f"{field} names at most {MAX_ENV_NAMES} variables")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InvalidPolicy(field, f"{field} holds {name!r}, not an environment variable name")
        if name not in checked:
            checked.append(name)
    return checked


def grant(account_id: str, task_types: Sequence[str], env: Sequence[object]) -> list[Event]:
    """Decide the grant of code-running task types (all of them when none are named)."""
    chosen = list(dict.fromkeys(task_types)) or list(CODE_TASK_TYPES)
    for t in chosen:
        if t not in CODE_TASK_TYPES:
            raise InvalidPolicy(
                "task_types", f"task_types holds {t!r}; grantable: {', '.join(CODE_TASK_TYPES)}"
            )
    return [CodeTasksGranted(account_id=account_id, task_types=chosen, env=_env_names(env, "env"))]


def revoke(state: AccountPolicy) -> list[Event]:
    """Decide the revocation of the account's grant; nothing when it has none."""
    return [] if state.grant is None else [CodeTasksRevoked(account_id=state.account_id)]


def pause(state: AccountPolicy) -> list[Event]:
    """Pause the account's intake of work; nothing when it is paused already."""
    return [] if state.paused else [AccountPaused(account_id=state.account_id)]


def resume(state: AccountPolicy) -> list[Event]:
    """Lift the account's pause; nothing when it is not paused."""
    return [AccountResumed(account_id=state.account_id)] if state.paused else []


def set_quotas(account_id: str, quotas: Quotas) -> list[Event]:
    """Decide new quotas, refusing a negative one (0 is allowed: nothing at all)."""
    for name in QUOTA_NAMES:
        value = getattr(quotas, name)
        if value is not None and (isinstance(value, bool) or value < 0):
            raise InvalidPolicy(name, f"{name} must be a whole number, 0 or more, or null")
    return [QuotasSet(account_id=account_id, quotas=quotas)]


def set_share(account_id: str, weight: int, default_priority: str | int) -> list[Event]:
    """Decide the account's share: a weight from 1 to `fair_share.MAX_WEIGHT` and a default
    priority (a word or a number, as a job's `priority`)."""
    if isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
        raise InvalidPolicy("weight", f"weight must be a whole number from 1 to {MAX_WEIGHT}")
    try:
        priority = parse_priority(default_priority)
    except InvalidPriority as exc:
        raise InvalidPolicy("default_priority", str(exc)) from None
    share = Share(weight=weight, default_priority=priority)
    return [ShareSet(account_id=account_id, share=share)]


def task_env(
    state: AccountPolicy, *, admin: bool, task_type: str, priority: str, payload_env: object
) -> list[str]:
    """Whether the caller may submit this task; the environment variables it may see.

    A code-running type needs an admin key or the account's grant of that type; the payload's
    `env` may name only variables the grant allows (an admin key may name any). A priority
    above `high` needs an admin key.
    """
    if priority in ADMIN_PRIORITIES and not admin:
        raise PolicyRefused("priority", f"priority {priority!r} needs an admin API key")
    names: list[str] = []
    if payload_env is not None:
        if not isinstance(payload_env, list):
            raise InvalidPolicy("payload.env", "payload.env must be a list of variable names")
        names = _env_names(payload_env, "payload.env")
    if task_type not in CODE_TASK_TYPES:
        return []
    if admin:
        return names
    if state.grant is None or task_type not in state.grant.task_types:
        raise PolicyRefused(
            "task_type",
            f"{task_type} tasks run code on nodes: they need an admin API key or a grant "
            "on the account (ask an admin: spool accounts grant)",
        )
    refused = [n for n in names if n not in state.grant.env]
    if refused:
        raise PolicyRefused(
            "payload.env",
            f"payload.env names {', '.join(refused)}, which the account's grant does not allow",
        )
    return names


def still_granted(state: AccountPolicy, task_type: str, env: Sequence[str]) -> str | None:
    """Why a task allowed by the grant at submission may no longer run (None: it may)."""
    if state.grant is None or task_type not in state.grant.task_types:
        return f"the account's grant of {task_type} tasks was revoked"
    dropped = [n for n in env if n not in state.grant.env]
    if dropped:
        return f"the account's grant no longer allows {', '.join(dropped)}"
    return None
