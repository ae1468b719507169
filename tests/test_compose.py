"""compose.yaml describes a cluster a user can start: its services, and real `spool` commands.

Docker does not run where the tests run: the file is parsed, its structure checked, and every
`spool` command in it is parsed by the `spool` command itself (`--help` of each, then its
flags and values as click would take them at start).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from spool.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _interpolated(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR:?message}` as an unset environment leaves them."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1>", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def _spool_services(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: [_interpolated(str(part)) for part in service["command"]]
        for name, service in compose["services"].items()
        if service.get("build") == "."
    }


def test_the_cluster_has_its_engines_an_api_reactors_and_several_workers(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "migrate", "api", "reactors"} <= set(
        services
    )
    commands = _spool_services(compose)
    assert sum(c[:2] == ["spool", "worker"] for c in commands.values()) >= 2
    assert commands["api"][:2] == ["spool", "api"] and "--processes" in commands["api"]
    assert commands["reactors"][:2] == ["spool", "reactors"]
    workers = [name for name, c in commands.items() if c[1] == "worker"]
    node_ids = [services[name]["environment"].get("SPOOL_NODE_ID") for name in workers]
    assert None not in node_ids and len(set(node_ids)) == len(node_ids)  # each its own id


def test_the_bucket_is_created_before_spool_starts(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio-init"]
    assert "mc mb" in " ".join(init["command"]) and "local/spool" in " ".join(init["command"])
    storage = compose["x-spool"]["environment"]["SPOOL_STORAGE_URL"]
    assert storage.startswith("s3://spool/")
    for name in _spool_services(compose):
        if name != "migrate":
            deps = compose["services"][name]["depends_on"]
            assert deps["minio-init"] == {"condition": "service_completed_successfully"}


def test_every_spool_service_waits_for_healthy_engines_and_the_schema(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for engine in ("postgres", "redis", "minio"):
        assert services[engine]["healthcheck"]["test"]
    for name in _spool_services(compose):
        deps = services[name]["depends_on"]
        assert deps["postgres"] == {"condition": "service_healthy"}
        if name != "migrate":
            assert deps["redis"] == {"condition": "service_healthy"}
            assert deps["migrate"] == {"condition": "service_completed_successfully"}
            assert services[name]["healthcheck"]["test"]


def test_every_volume_used_is_declared_and_each_node_has_its_own(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: dict[str, str] = {}
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            volume = mount.split(":", 1)[0]
            assert volume in declared, f"{name} mounts undeclared volume {volume}"
            assert volume not in used, f"{name} and {used.get(volume)} share {volume}"
            used[volume] = name


def test_all_spool_processes_share_the_secret_key_and_the_engines(compose: dict[str, Any]) -> None:
    env = compose["x-spool"]["environment"]
    assert {
        "SPOOL_DATABASE_URL",
        "SPOOL_REDIS_URL",
        "SPOOL_STORAGE_URL",
        "SPOOL_SECRET_KEY",
    } <= set(env)
    for name in _spool_services(compose):
        service_env = compose["services"][name]["environment"]
        assert service_env["SPOOL_SECRET_KEY"] == env["SPOOL_SECRET_KEY"]


@pytest.mark.parametrize("service", ["migrate", "api", "reactors", "worker-1", "worker-2"])
def test_each_command_is_a_real_spool_command_with_real_flags(
    compose: dict[str, Any], service: str
) -> None:
    command = _spool_services(compose)[service]
    assert command[0] == "spool"
    name, args = command[1], command[2:]
    assert isinstance(main, click.Group)
    assert name in main.commands, f"no `spool {name}`"
    helped = CliRunner().invoke(main, [name, "--help"])
    assert helped.exit_code == 0, helped.output
    for flag in (a for a in args if a.startswith("--")):
        assert flag in helped.output, f"`spool {name}` has no {flag}"
    # The flags with their values, parsed (and checked) as at start, without running anything.
    with main.commands[name].make_context(name, list(args)) as ctx:
        assert ctx.params is not None


def test_the_image_runs_the_spool_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*\.\s*$", dockerfile, re.M)
    assert re.search(r'^CMD \["spool", "up"', dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
