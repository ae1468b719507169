"""The one settings object, read from `SPOOL_*` environment variables and `spool` flags."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import msgspec
import platformdirs

from spool.domain.node_health import DiskFloor, parse_disk_floor
from spool.domain.not_ready import WaitPolicy

_NUMERIC_ENV = {
    "stage_attempts": "SPOOL_STAGE_ATTEMPTS",
    "retry_backoff": "SPOOL_RETRY_BACKOFF",
    "stall_timeout": "SPOOL_STALL_TIMEOUT",
    "reconcile_interval": "SPOOL_RECONCILE_INTERVAL",
    "node_timeout": "SPOOL_NODE_TIMEOUT",
    "lease_ttl": "SPOOL_LEASE_TTL",
    "queue_poll": "SPOOL_QUEUE_POLL",
    "dispatch_ahead": "SPOOL_DISPATCH_AHEAD",
    "dispatch_burst": "SPOOL_DISPATCH_BURST",
    "database_peer_timeout": "SPOOL_DATABASE_PEER_TIMEOUT",
    "database_pool_size": "SPOOL_DATABASE_POOL_SIZE",
    "probe_timeout": "SPOOL_PROBE_TIMEOUT",
    "probe_workers": "SPOOL_PROBE_WORKERS",
    "probe_share": "SPOOL_PROBE_SHARE",
    "task_concurrency": "SPOOL_TASK_CONCURRENCY",
    "rate_limit": "SPOOL_RATE_LIMIT",
    "health_token_ttl": "SPOOL_HEALTH_TOKEN_TTL",
    "health_auth_timeout": "SPOOL_HEALTH_AUTH_TIMEOUT",
    "viewer_stats_interval": "SPOOL_VIEWER_STATS_INTERVAL",
    "viewer_timeout": "SPOOL_VIEWER_TIMEOUT",
    "hls_cache_bytes": "SPOOL_HLS_CACHE_BYTES",
    "hls_builds": "SPOOL_HLS_BUILDS",
    "hls_builds_per_account": "SPOOL_HLS_BUILDS_PER_ACCOUNT",
    "hls_build_wait": "SPOOL_HLS_BUILD_WAIT",
    "quarantine_after": "SPOOL_QUARANTINE_AFTER",
    "quarantine_probe_interval": "SPOOL_QUARANTINE_PROBE_INTERVAL",
    "failed_files_keep": "SPOOL_FAILED_FILES_KEEP",
    "work_sweep_interval": "SPOOL_WORK_SWEEP_INTERVAL",
    "subscription_min_interval": "SPOOL_SUBSCRIPTION_MIN_INTERVAL",
    "max_subscriptions": "SPOOL_MAX_SUBSCRIPTIONS",
    "subscription_max_items": "SPOOL_SUBSCRIPTION_MAX_ITEMS",
    "subscription_checks": "SPOOL_SUBSCRIPTION_CHECKS",
    "subscription_check_timeout": "SPOOL_SUBSCRIPTION_CHECK_TIMEOUT",
    "not_ready_backoff": "SPOOL_NOT_READY_BACKOFF",
    "not_ready_backoff_max": "SPOOL_NOT_READY_BACKOFF_MAX",
    "not_ready_limit": "SPOOL_NOT_READY_LIMIT",
}

_FLAG_ENV = {
    "allow_command_tasks": "SPOOL_ALLOW_COMMAND_TASKS",
    "allow_python_eval": "SPOOL_ALLOW_PYTHON_EVAL",
    "archive_skips": "SPOOL_ARCHIVE_SKIPS",
}


class Settings(msgspec.Struct, kw_only=True):
    """Everything Spool is configured with. `None` URLs mean: start an embedded server."""

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(platformdirs.user_data_dir("spool"))
    storage_url: str | None = None
    api_key: str | None = None
    secret_key: str | None = None
    # A token a Prometheus scraper may present instead of an admin key (`GET /metrics`).
    metrics_token: str | None = None
    url_allowlist: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8081
    # Where clients reach the API: the base of the signed links to files in a local storage.
    public_url: str | None = None
    # This node, when it runs a worker.
    node_id: str = msgspec.field(default_factory=socket.gethostname)
    # The address the node reports (`/api/v1/devices` `ip_address`); None: the address its
    # route to the database host leaves from (adapters/sysinfo.py `primary_ip`).
    node_address: str | None = None
    role: str = "worker"
    tags: tuple[str, ...] = ()
    download_concurrency: int = 2
    mux_concurrency: int = 1
    upload_concurrency: int = 2
    # How the pipeline treats failure.
    stage_attempts: int = 3
    retry_backoff: float = 2.0
    stall_timeout: float = 120.0
    reconcile_interval: float = 10.0
    node_timeout: float = 15.0
    # How long a node's lease on a unit it started lasts past its last heartbeat listing the
    # unit (domain/lease.py); None: `node_timeout`, as long as the node itself is trusted.
    lease_ttl: float | None = None
    heartbeat_interval: float = 1.0
    # Seconds between a node's looks at a queue when no wake-up comes (reactors/worker/
    # arq_workers.py `PromptWorker`): units are taken on their enqueue's wake-up, so this only
    # bounds the cost of a lost one and how late a deferred retry starts.
    queue_poll: float = 0.2
    # Downloads the pipeline keeps in Redis ahead of the nodes, as a share of the online nodes'
    # download slots (reactors/pipeline.py): the rest wait in PostgreSQL's line, where the fair
    # shares between accounts and priorities order them. Less: fairer at once; more: no slot
    # waits for the pipeline.
    dispatch_ahead: float = 1.0
    # How far ahead of the accounts already waiting an account may go when its jobs arrive after
    # a quiet spell, as a share of the online nodes' download slots (domain/fair_share.py): 1.0
    # lets it start a cluster's worth at once before it takes turns; 0, turns from its first job.
    dispatch_burst: float = 1.0
    # How soon PostgreSQL lets go of a process that vanished mid-transaction (adapters/database.py
    # `peer_settings`): until then its open transaction holds every projection back.
    database_peer_timeout: float = 30.0
    # Connections one process keeps to PostgreSQL at most (spool/runtime.py), beside its log
    # listeners: the server's own limit is shared by every process of the cluster.
    database_pool_size: int = 20
    webhook_attempts: int = 5
    # Probes of a user's source by the API (playlist detection on `POST /jobs`, `/metadata`):
    # the total seconds one may take, the threads they run on, and how many one account holds.
    probe_timeout: float = 20.0
    probe_workers: int = 32
    probe_share: int = 4
    webhook_backoff: float = 5.0
    # Scheduled tasks on this node: how many at once, and the two types that run code (opt-in).
    task_concurrency: int = 2
    allow_command_tasks: bool = False
    allow_python_eval: bool = False
    # Requests per minute per API key on the cluster API (`/api/v1`); 0 turns the limit off.
    rate_limit: int = 60
    # The health websocket: lifetime of its JWTs, and how long a socket may stay unauthenticated.
    health_token_ttl: float = 900.0
    health_auth_timeout: float = 10.0
    # Viewers (live connections): how often a live one reports its bytes, how long one may stay
    # silent before it is closed by timeout, and an optional GeoIP database (MaxMind .mmdb).
    viewer_stats_interval: float = 5.0
    viewer_timeout: float = 30.0
    geoip_database: Path | None = None
    # The HLS cache: its cap in bytes (least recently played renditions are evicted past it),
    # builds at once in an API process in all and per account, and how long a build may wait
    # for a slot before the request answers 429.
    hls_cache_bytes: int = 1 << 30
    hls_builds: int = 4
    hls_builds_per_account: int = 2
    hls_build_wait: float = 15.0
    # Node health (domain/node_health.py): node-side unit failures in a row that quarantine a
    # node (0: never; read by the reactors), seconds a quarantined node waits before each probe
    # unit (read by the node), and the free disk below which a node takes no download: bytes
    # ("5000000000") or a percent of its disk ("5%"), "0" for none (read by the node).
    quarantine_after: int = 5
    quarantine_probe_interval: float = 300.0
    disk_floor: str = "0"
    # Seconds a node keeps a job's files after it failed or was cancelled past its download,
    # for a retry from mux or upload (domain/work_files.py); its sweep, every
    # `work_sweep_interval` seconds, reclaims them after. 0: removed when the job fails.
    failed_files_keep: float = 86400.0
    work_sweep_interval: float = 600.0
    # Subscriptions (domain/subscription.py): the shortest interval an account may ask for
    # (seconds; an admin may set another for one account: its `min_subscription_interval`
    # quota), subscriptions per account, new items one check may take at most, checks of one
    # account running at once in the whole cluster, and the seconds after which a check whose
    # process went silent is taken over.
    subscription_min_interval: int = 300
    max_subscriptions: int = 100
    subscription_max_items: int = 100
    subscription_checks: int = 2
    subscription_check_timeout: float = 600.0
    # Whether a job of an item already in its account's download archive is skipped
    # (domain/archive.py; read by the node). Off, every job downloads and the archive still
    # fills: for benches and test harnesses that fetch one clip again and again.
    archive_skips: bool = True
    # Media not out yet (a premiere, an upcoming live stream, a video still being processed:
    # domain/not_ready.py): seconds before its download tries again (doubling each time up to
    # `not_ready_backoff_max`, or shortly after the release time the source gives), and how
    # long a run waits in all before the job fails. Read by the node.
    not_ready_backoff: float = 300.0
    not_ready_backoff_max: float = 3600.0
    not_ready_limit: float = 172_800.0

    def __post_init__(self) -> None:
        parse_disk_floor(self.disk_floor)  # a malformed floor stops the process at its start

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment; non-None `overrides` (CLI flags) win."""
        env = dict(os.environ) if env is None else env
        values: dict[str, object] = {
            "database_url": env.get("SPOOL_DATABASE_URL") or None,
            "redis_url": env.get("SPOOL_REDIS_URL") or None,
            "storage_url": env.get("SPOOL_STORAGE_URL") or None,
            "api_key": env.get("SPOOL_API_KEY") or None,
            "secret_key": env.get("SPOOL_SECRET_KEY") or None,
            "metrics_token": env.get("SPOOL_METRICS_TOKEN") or None,
            "public_url": env.get("SPOOL_PUBLIC_URL") or None,
            "url_allowlist": tuple(
                h.strip() for h in env.get("SPOOL_URL_ALLOWLIST", "").split(",") if h.strip()
            ),
        }
        if env.get("SPOOL_METADATA_TIMEOUT"):  # the older name of SPOOL_PROBE_TIMEOUT
            values["probe_timeout"] = env["SPOOL_METADATA_TIMEOUT"]
        for name, var in _NUMERIC_ENV.items():
            if env.get(var):
                values[name] = env[var]
        for name, var in _FLAG_ENV.items():
            if env.get(var):
                values[name] = env[var].strip().lower() in ("1", "true", "yes", "on")
        if env.get("SPOOL_NODE_ID"):
            values["node_id"] = env["SPOOL_NODE_ID"]
        if env.get("SPOOL_NODE_ADDRESS"):
            values["node_address"] = env["SPOOL_NODE_ADDRESS"]
        if env.get("SPOOL_GEOIP_DATABASE"):
            values["geoip_database"] = Path(env["SPOOL_GEOIP_DATABASE"])
        if env.get("SPOOL_DISK_FLOOR"):
            values["disk_floor"] = env["SPOOL_DISK_FLOOR"]
        if env.get("SPOOL_DATA_DIR"):
            values["data_dir"] = Path(env["SPOOL_DATA_DIR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"])).expanduser()
        return msgspec.convert(values, cls, strict=False)

    def not_ready_policy(self) -> WaitPolicy:
        """How a job waits for media that is not out yet (`not_ready_*`)."""
        return WaitPolicy(
            first=self.not_ready_backoff,
            longest=self.not_ready_backoff_max,
            limit=self.not_ready_limit,
        )

    def resolved_disk_floor(self) -> DiskFloor:
        """The free-disk floor `disk_floor` says."""
        return parse_disk_floor(self.disk_floor)

    def resolved_public_url(self) -> str:
        """Where clients reach the API: `SPOOL_PUBLIC_URL`, else the API's own address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def resolved_lease_ttl(self) -> float:
        """Seconds a lease lasts past its grant or last renewal: `lease_ttl`, else
        `node_timeout`."""
        return self.node_timeout if self.lease_ttl is None else self.lease_ttl

    def resolved_secret_key(self) -> str:
        """The secret key: from settings, else generated once into the data dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return path.read_text().strip()
