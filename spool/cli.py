"""The `spool` command."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from spool.adapters.log_format import LOG_FORMAT_ENV, LOG_FORMATS, LogFormat, setup_logging
from spool.adapters.settings import Settings
from spool.domain.node import NodeHeartbeat
from spool.runtime import open_runtime

F = TypeVar("F", bound=Callable[..., Any])


def _database_options(fn: F) -> F:
    """Flags every command that talks to the database takes."""
    fn = click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Embedded servers' data, local storage, temp media "
        "[env: SPOOL_DATA_DIR; default: the user's data dir].",
    )(fn)
    fn = click.option(
        "--database-url",
        default=None,
        metavar="URL",
        help="PostgreSQL URL [env: SPOOL_DATABASE_URL; default: an embedded "
        "server under the data dir].",
    )(fn)
    return fn


def _settings(**flags: Any) -> Settings:
    return Settings.from_env(**flags)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return asyncio.run(coro)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


def _serve(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a long-running command on uvloop where it is installed (faster I/O for asyncpg)."""
    try:
        import uvloop
    except ImportError:
        return _run(coro)
    try:
        return uvloop.run(coro)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar=LOG_FORMAT_ENV,
    default=None,
    help="How every log line is written: one JSON object per line, or text "
    f"[env: {LOG_FORMAT_ENV}; default: text on a terminal, JSON otherwise].",
)
def main(verbose: bool, log_format: LogFormat | None) -> None:
    """Spool: a self-hostable, event-sourced media job cluster."""
    chosen = setup_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    # The processes this one starts log alike: uvicorn's API workers (`spool api
    # --processes N`) set their logging up from it in spool/serve.py api_process.
    os.environ[LOG_FORMAT_ENV] = chosen


def _node_options(fn: F) -> F:
    """Flags of every command that runs a worker node (`up` runs one too)."""
    options = [
        click.option(
            "--redis-url",
            default=None,
            metavar="URL",
            help="Redis URL [env: SPOOL_REDIS_URL; default: the data dir's embedded redis-server, "
            "run by `spool up`].",
        ),
        click.option(
            "--storage-url",
            default=None,
            metavar="URL",
            help="Default storage: s3://bucket/prefix?endpoint=... or file:///path "
            "[env: SPOOL_STORAGE_URL; default: a folder under the data dir].",
        ),
        click.option(
            "--node-id",
            default=None,
            help="This node's id [env: SPOOL_NODE_ID; default: the hostname]. Mux and "
            "upload come back to the node that downloaded.",
        ),
        click.option(
            "--url-allowlist",
            default=None,
            metavar="HOSTS",
            callback=_host_list,
            help="Comma-separated hosts / CIDRs downloads may reach despite the SSRF "
            "rules [env: SPOOL_URL_ALLOWLIST].",
        ),
        click.option(
            "--concurrency",
            default=None,
            metavar="download=N,mux=N,upload=N,task=N",
            callback=_concurrency,
            help="How many of each stage (and scheduled tasks) this node runs at once "
            "[default: 2,1,2,2; env: SPOOL_TASK_CONCURRENCY for task].",
        ),
        click.option(
            "--allow-command-tasks",
            is_flag=True,
            default=None,
            help="Run `command` tasks (programs, no shell) on this node "
            "[env: SPOOL_ALLOW_COMMAND_TASKS; default: off].",
        ),
        click.option(
            "--allow-python-eval",
            is_flag=True,
            default=None,
            help="Run `python_eval` tasks (a safe expression evaluator) on this node "
            "[env: SPOOL_ALLOW_PYTHON_EVAL; default: off].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _host_list(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return tuple(h.strip() for h in value.split(",") if h.strip()) if value else None


def _concurrency(ctx: click.Context, param: click.Parameter, spec: str | None) -> dict[str, int]:
    if not spec:
        return {}
    out: dict[str, int] = {}
    for part in spec.split(","):
        stage, _, n = part.partition("=")
        stage = stage.strip()
        stages = ("download", "mux", "upload", "task")
        if stage not in stages or not n.strip().isdigit() or int(n) < 1:
            raise click.BadParameter(
                f"{part!r}: expected download=N, mux=N, upload=N or task=N with N >= 1",
                param_hint="--concurrency",
            )
        out[f"{stage}_concurrency"] = int(n)
    return out


@main.command()
@_database_options
@_node_options
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="An admin key to create at start if missing [env: SPOOL_API_KEY].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds.")
@click.option("--port", default=8081, show_default=True, type=int, help="Port the API binds.")
@click.option(
    "--public-url",
    default=None,
    metavar="URL",
    help="Where clients reach the API: the base of a local storage's signed file links "
    "[env: SPOOL_PUBLIC_URL; default: http://HOST:PORT].",
)
def up(concurrency: dict[str, int], **flags: Any) -> None:
    """Run the cluster on this machine: API, worker and reactors, on embedded defaults."""
    from spool.serve import up as serve

    _serve(serve(_settings(**concurrency, **flags)))


def _service_options(fn: F) -> F:
    """Redis and storage flags of the commands that run no node (`api`, `reactors`)."""
    fn = click.option(
        "--storage-url",
        default=None,
        metavar="URL",
        help="Default storage: s3://bucket/prefix?endpoint=... or file:///path "
        "[env: SPOOL_STORAGE_URL; default: a folder under the data dir].",
    )(fn)
    fn = click.option(
        "--redis-url",
        default=None,
        metavar="URL",
        help="Redis URL [env: SPOOL_REDIS_URL; default: the data dir's embedded redis-server, "
        "run by `spool up`].",
    )(fn)
    return fn


@main.command()
@_database_options
@_service_options
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="An admin key to create at start if missing [env: SPOOL_API_KEY].",
)
@click.option(
    "--url-allowlist",
    default=None,
    metavar="HOSTS",
    callback=_host_list,
    help="Comma-separated hosts / CIDRs the URL checks let through [env: SPOOL_URL_ALLOWLIST].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds.")
@click.option("--port", default=8081, show_default=True, type=int, help="Port the API binds.")
@click.option(
    "--public-url",
    default=None,
    metavar="URL",
    help="Where clients reach the API: the base of a local storage's signed file links "
    "[env: SPOOL_PUBLIC_URL; default: http://HOST:PORT].",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="API processes sharing the port (uvicorn workers); about one per core.",
)
def api(processes: int, **flags: Any) -> None:
    """Run the API alone (no reactors, no node), in one or more processes.

    Run `spool reactors` somewhere against the same database and Redis: the API's reads come
    from the projections they keep.
    """
    from spool.serve import api as serve_api

    try:
        serve_api(_settings(**flags), processes)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@_database_options
@_service_options
def reactors(**flags: Any) -> None:
    """Run the projections, the pipeline and webhook reactors, the scheduler and the reconciler.

    Several at once (on several machines) are safe: each event is applied once.
    """
    from spool.serve import run_reactors

    _serve(run_reactors(_settings(**flags)))


@main.command()
@_database_options
@_node_options
@click.option("--role", default=None, help="This node's role (worker, compute, storage...).")
@click.option("--tag", "tags", multiple=True, help="A tag for this node; repeat for more.")
def worker(concurrency: dict[str, int], tags: tuple[str, ...], **flags: Any) -> None:
    """Run a worker node: download, mux and upload stages, with a heartbeat every second."""
    from spool.serve import worker as run_worker

    _serve(run_worker(_settings(tags=tags or None, **concurrency, **flags)))


@main.command()
@_database_options
def migrate(**flags: Any) -> None:
    """Bring the database schema up to date."""

    async def go() -> None:
        async with open_runtime(_settings(**flags)) as rt:
            click.echo(f"database is at the latest schema ({rt.database_url.split('@')[-1]})")

    _run(go())


@main.group()
def db() -> None:
    """Where Spool's PostgreSQL is, and a SQL shell on it (for reports: docs/reporting.md)."""


def _database_url_in_use(settings: Settings) -> str:
    """The given URL, else the running embedded server's; never starts one (it would stop
    again when this command ends, leaving a URL to nothing)."""
    if settings.database_url:
        return settings.database_url
    from spool.embedded import running_postgres_url

    url = running_postgres_url(settings.data_dir)
    if url is None:
        raise click.ClickException(
            f"the embedded PostgreSQL of data dir {settings.data_dir} is not running: "
            "start `spool up` first (or give --database-url)"
        )
    return url


@db.command("url")
@_database_options
def db_url(**flags: Any) -> None:
    """Print the PostgreSQL URL Spool uses: the given one, or the running embedded server's."""
    click.echo(_database_url_in_use(_settings(**flags)))


@db.command("shell", context_settings={"ignore_unknown_options": True})
@_database_options
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_shell(psql_args: tuple[str, ...], **flags: Any) -> None:
    """Open psql on Spool's database; arguments after the flags go to psql (`-c "SQL"`)."""
    from spool.embedded import psql_path

    url = _database_url_in_use(_settings(**flags))
    psql = psql_path()
    if psql is None:
        raise click.ClickException(
            "psql is not installed: install PostgreSQL's client (e.g. apt-get install "
            "postgresql-client), or point any SQL client at `spool db url`"
        )
    sys.stdout.flush()
    os.execv(psql, [psql, url, *psql_args])


@main.group()
def keys() -> None:
    """Manage API keys."""


def _expiry(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """`--expires`: an ISO 8601 time (UTC unless it says), or a span from now: 90d, 12h, 30m."""
    if value is None:
        return None
    spans = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = value[:-1], value[-1:]
    if unit in spans and number.isdigit():
        return datetime.now(UTC) + timedelta(**{spans[unit]: int(number)})
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a time (2027-01-31T12:00Z) nor a span (90d, 12h, 30m)"
        ) from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    if at <= datetime.now(UTC):
        raise click.BadParameter(f"{value} is in the past")
    return at


def _scope(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from spool.domain.account import parse_scope, scope_text

    if value is None:
        return None
    try:
        return scope_text(parse_scope(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at is not None else "-"


@keys.command("create")
@_database_options
@click.option("--name", required=True, help="What the key is for (shown in listings).")
@click.option(
    "--scope",
    default=None,
    callback=_scope,
    help="read, jobs, tasks or admin, or a set like jobs,tasks [default: jobs,tasks].",
)
@click.option("--admin", is_flag=True, help="The same as --scope admin.")
@click.option(
    "--expires",
    default=None,
    callback=_expiry,
    metavar="WHEN",
    help="When the key stops working: a time (2027-01-31T12:00Z) or a span (90d, 12h, 30m).",
)
@click.option(
    "--account",
    default=None,
    metavar="ID",
    help="Add the key to this existing account [default: a new account].",
)
def keys_create(
    name: str,
    scope: str | None,
    admin: bool,
    expires: datetime | None,
    account: str | None,
    **flags: Any,
) -> None:
    """Create an API key and print it (it is shown only once)."""
    from spool.adapters.key_store import issue
    from spool.adapters.read_models import api_keys

    if not name.strip():
        raise click.BadParameter("must not be blank", param_hint="--name")
    if admin and scope not in (None, "admin"):
        raise click.BadParameter(f"--admin and --scope {scope} disagree", param_hint="--scope")

    async def go() -> str:
        async with open_runtime(_settings(**flags)) as rt:
            if account is not None and not await api_keys.has_keys(rt.pool, account):
                raise click.BadParameter(f"no account {account}", param_hint="--account")
            issued = await issue(
                rt.store,
                name=name,
                admin=admin,
                scope=scope,
                expires_at=expires,
                account_id=account,
            )
            await rt.runner.wait_until("api_keys", issued.at)
            return issued.key

    click.echo(_run(go()))


@keys.command("list")
@_database_options
@click.option("--account", default=None, metavar="ID", help="Only this account's keys.")
def keys_list(account: str | None, **flags: Any) -> None:
    """Every key: id, name, account, scope, created, last used, expiry, revoked (never the key)."""
    from spool.adapters.key_store import KeyRow, list_keys

    async def go() -> list[KeyRow]:
        async with open_runtime(_settings(**flags)) as rt:
            await rt.runner.settle("api_keys")
            return await list_keys(rt.store, account)

    rows = _run(go())
    header = ("ID", "NAME", "ACCOUNT", "SCOPE", "CREATED", "LAST USED", "EXPIRES", "REVOKED")
    table = [header] + [
        (
            r.key_id,
            r.name,
            r.account_id,
            r.scope,
            _when(r.created_at),
            _when(r.last_used_at),
            _when(r.expires_at),
            "yes" if r.revoked else ("replaced" if r.replaced_by else "no"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _owner(rt: Any, key_id: str) -> str:
    from spool.adapters.key_store import owner_of

    await rt.runner.settle("api_keys")
    owner = await owner_of(rt.store, key_id)
    if owner is None:
        raise click.ClickException(f"no key {key_id} (see `spool keys list`)")
    return str(owner)


@keys.command("revoke")
@_database_options
@click.argument("key_id", metavar="ID")
def keys_revoke(key_id: str, **flags: Any) -> None:
    """Revoke a key: it stops working everywhere within 5 s, open websockets included."""
    from spool.adapters.key_store import revoke
    from spool.domain.events import Metadata

    async def go() -> bool:
        async with open_runtime(_settings(**flags)) as rt:
            owner = await _owner(rt, key_id)
            at = await revoke(rt.store, owner, key_id, Metadata(actor="cli"))
            if at is not None:
                await rt.runner.wait_until("api_keys", at)
            return at is not None

    click.echo(f"key {key_id} revoked" if _run(go()) else f"key {key_id} was already revoked")


@keys.command("expire")
@_database_options
@click.argument("key_id", metavar="ID")
@click.option(
    "--at",
    "when",
    required=True,
    callback=_expiry,
    metavar="WHEN",
    help="When the key stops working: a time (2027-01-31T12:00Z) or a span (90d, 12h, 30m).",
)
def keys_expire(key_id: str, when: datetime, **flags: Any) -> None:
    """Set when a key stops working (earlier or later than before)."""
    from spool.adapters.key_store import set_expiry
    from spool.domain.account import KeyRetired
    from spool.domain.events import Metadata

    async def go() -> None:
        async with open_runtime(_settings(**flags)) as rt:
            owner = await _owner(rt, key_id)
            try:
                at = await set_expiry(rt.store, owner, key_id, when, Metadata(actor="cli"))
            except (KeyRetired, ValueError) as exc:
                raise click.ClickException(str(exc)) from None
            await rt.runner.wait_until("api_keys", at)

    _run(go())
    click.echo(f"key {key_id} expires at {_when(when)}")


@keys.command("rotate")
@_database_options
@click.argument("key_id", metavar="ID")
@click.option(
    "--grace",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="How long the old key keeps working beside the new one.",
)
def keys_rotate(key_id: str, grace: int, **flags: Any) -> None:
    """Replace a key by a new one (same account, name, scope, expiry) and print it once."""
    from spool.adapters.key_store import rotate
    from spool.domain.account import KeyRetired
    from spool.domain.events import Metadata

    async def go() -> str:
        async with open_runtime(_settings(**flags)) as rt:
            owner = await _owner(rt, key_id)
            try:
                issued = await rotate(
                    rt.store,
                    owner,
                    key_id,
                    grace=timedelta(seconds=grace),
                    meta=Metadata(actor="cli"),
                )
            except KeyRetired as exc:
                raise click.ClickException(str(exc)) from None
            await rt.runner.wait_until("api_keys", issued.at)
            return issued.key

    new_key = _run(go())
    until = f"for {grace} s more" if grace else "no more"
    click.echo(f"key {key_id} replaced; it works {until}. The new key (shown once):", err=True)
    click.echo(new_key)


@main.group()
def accounts() -> None:
    """What an admin allows each account: grants of code-running tasks, and quotas."""


def _quota_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A quota flag: a whole number (0 or more), `none` for no limit, or unset (unchanged)."""
    if value is None:
        return _UNCHANGED
    if value.strip().lower() in ("none", "unlimited"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter("a whole number, or none") from None
    if number < 0:
        raise click.BadParameter("must be 0 or more")
    return number


_UNCHANGED = object()
_QUOTA_FLAGS = {
    "running": "max_running_jobs",
    "per_day": "max_jobs_per_day",
    "storage_bytes": "max_storage_bytes",
    "media_seconds": "max_media_seconds",
}


def _describe(policy: Any) -> str:
    grant = policy.grant
    granted = (
        f"grant: {', '.join(grant.task_types)}"
        + (f" (env: {', '.join(grant.env)})" if grant.env else "")
        if grant is not None
        else "grant: none"
    )
    limits = ", ".join(
        f"{name}={getattr(policy.quotas, name)}"
        for name in _QUOTA_FLAGS.values()
        if getattr(policy.quotas, name) is not None
    )
    return f"{granted}; quotas: {limits or 'none'}"


async def _change_policy(
    flags: dict[str, Any], account_id: str, decide: Callable[[Any], list[Any]]
) -> str:
    """Apply `decide` to an account's policy through the store; a line describing the result."""
    from spool.adapters.account_policy_store import load_policy, record
    from spool.domain.events import Metadata

    async with open_runtime(_settings(**flags)) as rt:
        policy = await load_policy(rt.store, account_id)
        if policy is None:
            raise click.ClickException(f"account {account_id!r} not found")
        await record(rt.store, account_id, decide(policy), Metadata(actor="cli"))
        changed = await load_policy(rt.store, account_id)
        return f"{account_id}: {_describe(changed)}"


@accounts.command("list")
@_database_options
def accounts_list(**flags: Any) -> None:
    """Every account with a key: its keys' names, its grant and its quotas."""
    from spool.adapters.account_policy_store import accounts as all_accounts
    from spool.adapters.account_policy_store import load_policy
    from spool.domain.account_policy import AccountPolicy

    async def go() -> list[str]:
        async with open_runtime(_settings(**flags)) as rt:
            lines = []
            for row in await all_accounts(rt.pool):
                policy = await load_policy(rt.store, row.account_id)
                names = ", ".join(
                    str(k["name"])
                    + (" (admin)" if k["admin"] else "")
                    + (" (revoked)" if k["revoked"] else "")
                    for k in row.keys
                )
                described = _describe(policy or AccountPolicy(account_id=row.account_id))
                lines.append(f"{row.account_id}  keys: {names}; {described}")
            return lines

    for line in _run(go()):
        click.echo(line)


@accounts.command("quota")
@_database_options
@click.argument("account_id")
@click.option("--running", callback=_quota_value, help="Jobs not yet finished at once.")
@click.option("--per-day", callback=_quota_value, help="Jobs created in one UTC day.")
@click.option("--storage-bytes", callback=_quota_value, help="Bytes held in storage.")
@click.option("--media-seconds", callback=_quota_value, help="Longest media fetched (s).")
def accounts_quota(account_id: str, **options: Any) -> None:
    """Set quotas of ACCOUNT_ID: each flag a number or `none` (no limit); others unchanged."""
    import msgspec

    from spool.domain import account_policy

    flags = {k: options.pop(k) for k in ("data_dir", "database_url")}
    given = {_QUOTA_FLAGS[k]: v for k, v in options.items() if v is not _UNCHANGED}

    def decide(policy: Any) -> list[Any]:
        quotas = msgspec.structs.replace(policy.quotas, **given)
        return account_policy.set_quotas(account_id, quotas)

    click.echo(_run(_change_policy(flags, account_id, decide)))


@accounts.command("grant")
@_database_options
@click.argument("account_id")
@click.option(
    "--task-type",
    "task_types",
    multiple=True,
    type=click.Choice(["command", "python_eval", "http_request"]),
    help="A code-running task type to allow (repeat; default: all three).",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="NAME",
    help="A node environment variable the account's tasks may name in payload.env (repeat).",
)
def accounts_grant(
    account_id: str, task_types: tuple[str, ...], env: tuple[str, ...], **flags: Any
) -> None:
    """Let ACCOUNT_ID run code-running tasks (replaces its earlier grant)."""
    from spool.domain import account_policy

    try:  # judged before the database is opened: a bad name changes nothing
        events = account_policy.grant(account_id, list(task_types), list(env))
    except account_policy.InvalidPolicy as exc:
        hint = f"--{exc.field.replace('_', '-')}"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    click.echo(_run(_change_policy(flags, account_id, lambda _policy: events)))


@accounts.command("revoke-grant")
@_database_options
@click.argument("account_id")
def accounts_revoke_grant(account_id: str, **flags: Any) -> None:
    """Take back ACCOUNT_ID's grant: its queued code-running tasks will not run."""
    from spool.domain import account_policy

    click.echo(_run(_change_policy(flags, account_id, account_policy.revoke)))


@main.group()
def nodes() -> None:
    """Drain, undrain and release worker nodes (`/api/v1/devices` lists them)."""


def _change_node(flags: dict[str, Any], node_id: str, action: str) -> str:
    """Drain, undrain or release a node through its repository; a line saying where it stands."""
    from spool.application.nodes import drain_node, release_node, undrain_node
    from spool.domain.events import Metadata
    from spool.domain.node import UnknownNode

    command = {"drain": drain_node, "undrain": undrain_node, "release": release_node}[action]

    async def go() -> str:
        async with open_runtime(_settings(**flags)) as rt:
            try:
                state = await command(rt.store, node_id, Metadata(actor="cli"))
            except UnknownNode:
                raise click.ClickException(
                    f"node {node_id!r} not found (never registered, or removed)"
                ) from None
            if state.quarantined_since is not None:
                since = state.quarantined_since.isoformat(timespec="seconds")
                return (
                    f"{node_id}: quarantined since {since}: takes no new work until released "
                    f"({state.quarantine_reason})"
                )
            if state.draining_since is None:
                return f"{node_id}: active, takes new work"
            since = state.draining_since.isoformat(timespec="seconds")
            return f"{node_id}: draining since {since}: finishes what it runs, takes nothing new"

    line: str = _run(go())
    return line


@nodes.command("drain")
@_database_options
@click.argument("node_id")
def nodes_drain(node_id: str, **flags: Any) -> None:
    """Drain NODE_ID: it finishes what it runs and takes no new work until undrained."""
    click.echo(_change_node(flags, node_id, "drain"))


@nodes.command("undrain")
@_database_options
@click.argument("node_id")
def nodes_undrain(node_id: str, **flags: Any) -> None:
    """Let NODE_ID take new work again."""
    click.echo(_change_node(flags, node_id, "undrain"))


@nodes.command("release")
@_database_options
@click.argument("node_id")
def nodes_release(node_id: str, **flags: Any) -> None:
    """Release NODE_ID from its quarantine: it takes new work again (unless drained)."""
    click.echo(_change_node(flags, node_id, "release"))


@main.group()
def projections() -> None:
    """Inspect and rebuild projections."""


@projections.command("status")
@_database_options
def projections_status(**flags: Any) -> None:
    """How far behind the log each projection is."""

    async def go() -> None:
        async with open_runtime(_settings(**flags)) as rt:
            for p in rt.runner.projections:
                click.echo(f"{p.name:<20} {await rt.runner.pending(p.name):>10} events behind")

    _run(go())


@projections.command("rebuild")
@_database_options
@click.argument("names", nargs=-1, metavar="[NAME]...")
def projections_rebuild(names: tuple[str, ...], **flags: Any) -> None:
    """Rebuild NAMEs (default: every projection) from position zero, aside, then swap them in.

    One pass over the log feeds them all; the API keeps serving the old rows until the new
    ones are complete, and all are swapped in one short transaction.
    """
    from spool.reactors.projection import REBUILD_BATCH, ProjectionRunner

    async def go() -> dict[str, int]:
        async with open_runtime(_settings(**flags)) as rt:
            chosen = list(names) or [p.name for p in rt.runner.projections]
            for n in chosen:
                try:
                    rt.runner.projection(n)
                except KeyError as exc:
                    raise click.BadParameter(str(exc.args[0]), param_hint="NAME") from None
            # Large batches: a rebuild applies the whole log, so per-batch costs add up.
            runner = ProjectionRunner(rt.store, rt.runner.projections, batch_size=REBUILD_BATCH)
            for n in chosen:  # before any work: refused means nothing was touched
                await runner.check_history(n)
            # What an interrupted rebuild of any of them left behind starts again from zero.
            await rt.pool.execute(
                "DELETE FROM checkpoints WHERE name LIKE '%@rebuild' "
                "AND string_to_array(split_part(name, '@', 1), '+') && $1::text[]",
                chosen,
            )
            types = set().union(*(runner.projection(n).event_types for n in chosen))
            total = await rt.pool.fetchval(
                "SELECT count(*) FROM events WHERE type = ANY($1::text[])", list(types)
            )
            with click.progressbar(
                length=total,
                label=f"rebuilding {', '.join(chosen)}",
                file=sys.stderr,
                show_pos=True,
            ) as bar:
                return await runner.rebuild_together(chosen, progress=bar.update)

    for n, applied in _run(go()).items():
        click.echo(f"{n}: rebuilt from {applied} events and swapped in")


@main.group()
def events() -> None:
    """Retention of the event log: archive old heartbeat days to files, restore them."""


def _past_date(ctx: click.Context, param: click.Parameter, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@events.command("archive")
@_database_options
@click.option(
    "--before",
    "before",
    required=True,
    metavar="DATE",
    callback=_past_date,
    help="Archive every heartbeat day before this UTC date (YYYY-MM-DD, before today).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the files go [default: archive/ under the data dir].",
)
def events_archive(before: date, directory: Path | None, **flags: Any) -> None:
    """Write heartbeat days before DATE to files, then detach and drop their partitions.

    One gzip'd JSON Lines file a day (docs/retention.md); each is recorded in the database.
    """
    from spool.adapters.event_archive import archive

    today = datetime.now(UTC).date()
    if before >= today:  # checked before any server starts: bad input touches nothing
        raise click.BadParameter(
            f"{before} is not before today ({today} UTC): only finished days can be archived",
            param_hint="--before",
        )
    settings = _settings(**flags)
    target = directory or settings.data_dir / "archive"

    async def go() -> Any:
        async with open_runtime(settings) as rt:
            beat = NodeHeartbeat.__name__
            readers = [p.name for p in rt.runner.projections if beat in p.event_types]
            return await archive(rt.pool, before, target, today, readers)

    done = _run(go())  # an ArchiveError is a RuntimeError: _run shows its message
    for a in done:
        where = a.file if a.file is not None else "(no events: partition dropped)"
        click.echo(f"{a.day}: {a.events} events -> {where}")
    if not done:
        click.echo(f"no heartbeat days before {before} in the log")


@events.command("restore")
@_database_options
@click.argument("file", type=click.Path(path_type=Path))
def events_restore(file: Path, **flags: Any) -> None:
    """Bring an archived heartbeat day back into the log, positions and order as they were.

    Restoring a day that is already back changes nothing.
    """
    from spool.adapters.event_archive import ArchiveError, read_file, restore

    try:
        read_file(file)  # a missing or corrupt file fails before any server starts
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> Any:
        async with open_runtime(_settings(**flags)) as rt:
            return await restore(rt.pool, file)

    done = _run(go())
    if done.already:
        click.echo(f"{done.day}: already in the log, nothing restored")
    else:
        click.echo(f"{done.day}: {done.events} events restored from {file}")


@main.group()
def replay() -> None:
    """Audit the log: a stream's history as a timeline, or verify the projections against it."""


def _replay_command(kind: str) -> None:
    whose = "an account's download archive" if kind == "archive" else f"a {kind}'s"

    @replay.command(kind, help=f"Print {whose} history: one line an event, then a summary.")
    @_database_options
    @click.argument("raw_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object an event (JSON Lines).")
    @click.option("--progress", is_flag=True, help="Show progress events too (text only).")
    def show(raw_id: str, as_json: bool, progress: bool, **flags: Any) -> None:
        from spool.replay import load_timeline, render_json_lines, render_text, stream_of

        try:
            stream_id = stream_of(kind, raw_id)
        except ValueError:
            raise click.BadParameter(f"{raw_id!r} is not a {kind} id", param_hint="ID") from None

        async def go() -> Any:
            async with open_runtime(_settings(**flags)) as rt:
                return await load_timeline(rt.store, kind, stream_id)

        timeline = _run(go())
        if timeline is None:
            raise click.ClickException(f"no {kind} {raw_id} in the log")
        for line in (
            render_json_lines(timeline) if as_json else render_text(timeline, progress=progress)
        ):
            click.echo(line)


for _kind in ("job", "batch", "task", "archive"):
    _replay_command(_kind)


@replay.command("verify")
@_database_options
def replay_verify(**flags: Any) -> None:
    """Fold every job, task and batch stream again and compare with the projections.

    Each difference is printed (stream, column, projection value vs folded value) and the
    command exits 1; it exits 0 when there is none.
    """
    from spool.reactors.verify import Difference, verify

    def found(d: Difference) -> None:
        click.echo(f"{d.stream_id} {d.column}: projection {d.projected!r} != folded {d.folded!r}")

    async def go() -> Any:
        async with open_runtime(_settings(**flags)) as rt:
            return await verify(rt.store, rt.runner, found)

    result = _run(go())
    counts = ", ".join(f"{n} {name}" for name, n in result.checked.items())
    if result.differences:
        click.echo(f"checked {counts}: {result.differences} differences", err=True)
        sys.exit(1)
    click.echo(f"checked {counts}: no differences")
