"""Connections to PostgreSQL: the asyncpg pool and the Alembic migrations."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from spool import migrations
from spool.adapters.event_store import init_connection

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(migrations.__file__).parent


def asyncpg_url(url: str) -> str:
    """The plain `postgresql://` form asyncpg takes (SQLAlchemy's driver suffix removed)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def sqlalchemy_url(url: str) -> str:
    """The `postgresql+asyncpg://` form SQLAlchemy and Alembic take."""
    return "postgresql+asyncpg://" + asyncpg_url(url).split("://", 1)[1]


def with_database(url: str, database: str) -> str:
    """The same server URL pointed at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


_UNREACHABLE = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: the database does not exist (yet)
    asyncpg.exceptions.TooManyConnectionsError,  # 53300: the server's or role's slots are full
    # 25006: a write reached a server that is (now) a read-only standby, as after a failover.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def unreachable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database could not be reached.

    A stopped, restarting or cut-off server fails a call fast, in one of these ways; whatever
    the call was, it can simply be tried again once the server is back. An OSError counts only
    when asyncpg raised it (refused, reset, the socket file gone), not a missing local file.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _UNREACHABLE):
            return True
        if isinstance(seen, OSError) and _raised_in_asyncpg(seen):
            return True
        if isinstance(seen, asyncpg.InterfaceError) and "connection" in str(seen):
            return True  # "connection is closed", "connection was closed in the middle..."
        if isinstance(seen, asyncpg.ObjectNotInPrerequisiteStateError) and (
            "accepting connections" in str(seen)
        ):
            return True  # 55000 at connect: `ALTER DATABASE ... ALLOW_CONNECTIONS false`
        if isinstance(seen, asyncpg.InternalClientError) and "another operation" in str(seen):
            # A connection that broke mid-query in an outage and was taken again: the call
            # failed before anything was sent ("cannot switch to state N; another operation
            # is in progress"), so it can be tried again like any other unreachable call.
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class SpoolConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that remembers whether it took session state (LISTEN)."""

    listened = False

    async def add_listener(self, channel: str, callback: Any) -> None:
        self.listened = True
        await super().add_listener(channel, callback)


async def reset_connection(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: one more round trip per query, the largest single cost of the API and the
    projections in the pipeline benchmark. The pool has already rolled back any open
    transaction and dropped listener callbacks; Spool takes no other session state (settings
    are `SET LOCAL`, advisory locks are transaction-scoped), so only a connection that
    LISTENed gets the full reset.
    """
    if isinstance(conn, SpoolConnection) and conn.listened:
        await conn.execute(conn.get_reset_query())
        conn.listened = False


def peer_settings(peer_timeout: float) -> dict[str, str]:
    """What the server is told, per connection, so that a client that vanished (its machine
    died, its link went down) is let go within `peer_timeout` seconds.

    An event becomes readable only once every older transaction has ended (the projections
    read below the oldest running one, adapters/event_store.py), so one connection left open
    in a transaction by a node cut off from the network would hold every projection of the
    cluster back until the server noticed: by default, TCP's two hours. The server ends a
    transaction idle that long, probes a silent peer with keepalives (unanswered for about
    five sixths of the timeout: dead), and drops a connection whose sent data goes unacknowledged
    that long. Unix-socket connections ignore the TCP parts.
    """
    whole = max(1, round(peer_timeout))
    return {
        "idle_in_transaction_session_timeout": str(round(peer_timeout * 1000)),
        "tcp_keepalives_idle": str(max(1, whole // 3)),
        "tcp_keepalives_interval": str(max(1, whole // 6)),
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": str(round(peer_timeout * 1000)),
    }


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, peer_timeout: float | None = None
) -> asyncpg.Pool:
    """An asyncpg pool whose connections pass jsonb through as bytes; with `peer_timeout`, the
    server lets go of a connection whose client vanished within that many seconds
    (`peer_settings`)."""
    pool = await asyncpg.create_pool(
        asyncpg_url(url),
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        connection_class=SpoolConnection,
        reset=reset_connection,
        server_settings=None if peer_timeout is None else peer_settings(peer_timeout),
    )
    assert pool is not None
    return pool


CONNECT_TIMEOUT = 3.0
"""Seconds a command waits for the database to answer at start before it gives up."""


async def check_reachable(url: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect once, or raise RuntimeError with one line saying where and why not.

    A start against a database that refuses, is unknown or does not answer ends at once with
    that line, instead of hanging in a pool's or a migration's own (minute-long) waits. The
    line names the host and port, never the URL's password.
    """
    parts = urlsplit(asyncpg_url(url))
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    if parts.hostname is None and "host=" in parts.query:
        where = "its socket"  # an embedded server's: a socket file named in the query
    try:
        conn = await asyncpg.connect(asyncpg_url(url), timeout=timeout)
    except TimeoutError:
        raise RuntimeError(
            f"cannot reach the database at {where}: no answer within {timeout:g} s"
        ) from None
    except ConnectionRefusedError:
        raise RuntimeError(f"cannot reach the database at {where}: connection refused") from None
    except OSError as exc:
        reason = "unknown host" if isinstance(exc, socket.gaierror) else exc.strerror or str(exc)
        raise RuntimeError(f"cannot reach the database at {where}: {reason}") from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise RuntimeError(f"cannot use the database at {where}: {exc}") from None
    await conn.close()


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the database at `url`, over this repository's migrations."""
    # Imported here: Alembic costs every process's start a noticeable share of its imports, and
    # only the processes that migrate need it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def migrate_sync(url: str, revision: str = "head") -> None:
    """Bring the database up to `revision` (blocking; Alembic runs its own event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def migrate(url: str, revision: str = "head") -> None:
    """Bring the database up to `revision` from async code."""
    await asyncio.to_thread(migrate_sync, url, revision)


async def current_revision(url: str) -> str | None:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        rev: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
        return rev
    finally:
        await conn.close()


async def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` on the server (a copy of `template` if given) and return its URL."""
    conn = await asyncpg.connect(asyncpg_url(server_url))
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_url(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
