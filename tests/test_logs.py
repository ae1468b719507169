"""Logs a machine can read: one format per process, every logger in it, no library warnings.

Real `spool` processes write to a file as a service's collector would read them (stderr not a
terminal), and every line is parsed.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters import log_context
from spool.adapters.log_format import JsonFormatter, TextFormatter, chosen_format
from spool.adapters.log_redaction import REDACTED
from spool.embedded import free_port
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import REPO_ROOT, SpoolProcesses, child_env, wait_http

SPOOL = [sys.executable, "-m", "spool"]
KEY = "sk_log_format_test_key_0123456789abcdef"


def _records(log: str) -> list[dict[str, Any]]:
    """Every line of `log` as the JSON object it must be (an assertion names a line that is not)."""
    records = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "logger", "message"} <= set(record), line
        assert record["timestamp"].endswith("Z"), line
        records.append(record)
    return records


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "warn" in line.lower()]


def _until(what: str, check: Any, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:g} s"
        time.sleep(0.2)
    return got


def test_spool_up_writes_every_loggers_records_as_one_json_object_per_line(
    tmp_path: Path, fresh_database_url: str, redis_url: str, media_server: MediaServer
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = SpoolProcesses(tmp_path, {"SPOOL_API_KEY": KEY})
    proc = procs.start(
        "up",
        "--log-format", "json", "up", "--port", str(port),
        "--database-url", fresh_database_url, "--redis-url", redis_url,
        "--data-dir", str(tmp_path / "data"), "--url-allowlist", "127.0.0.1/32",
        "--node-id", "log-node",
    )  # fmt: skip
    headers = {"x-api-key": KEY}
    try:
        with procs.kept_logs():
            wait_http(f"{base}/health", 60, proc)
            asked = httpx.get(f"{base}/jobs", headers={**headers, "x-request-id": "log-req-1"})
            assert asked.status_code == 200, asked.text
            created = httpx.post(
                f"{base}/jobs", json={"url": media_server.url("clip.mp4")}, headers=headers
            )
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
            submitted = httpx.post(
                f"{base}/api/v1/tasks",
                json={"task_type": "echo", "payload": {"message": "hello"}},
                headers=headers,
            )
            assert submitted.status_code == 201, submitted.text
            task_id = submitted.json()["data"]["task_id"]
            _until(
                "the job's completion",
                lambda: (
                    httpx.get(f"{base}/jobs/{job_id}", headers=headers).json()["status"]
                    == "Completed"
                ),
            )
            _until(
                "the task's success",
                lambda: (
                    httpx.get(f"{base}/api/v1/tasks/{task_id}", headers=headers).json()["data"][
                        "status"
                    ]
                    == "success"
                ),
            )
    finally:
        procs.stop("up", seconds=30)

    records = _records(procs.log("up", tail=10_000_000))
    families = {r["logger"].split(".")[0] for r in records}
    assert {"spool", "uvicorn", "arq", "api"} <= families, families
    [request] = [r for r in records if r.get("request_id") == "log-req-1"]
    assert request["logger"] == "api.requests" and request["message"] == "Request processed"
    assert (request["method"], request["path"], request["status_code"]) == ("GET", "/jobs", 200)
    stages = [r for r in records if r.get("job_id") == job_id and r["logger"] == "spool.node"]
    assert {r["message"].split()[0] for r in stages} >= {"download", "mux", "upload"}, records
    assert all(r["node_id"] == "log-node" for r in stages)
    assert any(r.get("task_id") == task_id and r.get("node_id") == "log-node" for r in records)
    assert any(r["logger"].startswith("arq") and r.get("node_id") == "log-node" for r in records)


def test_a_normal_start_on_embedded_defaults_logs_json_on_a_non_tty_and_no_warning(
    tmp_path: Path,
) -> None:
    """XDG_RUNTIME_DIR unset, as under a service manager or in a container."""
    env = {k: v for k, v in child_env().items() if k != "XDG_RUNTIME_DIR"}
    data_dir = str(tmp_path / "data")

    def spool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SPOOL, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    helped = spool("--help")
    assert helped.returncode == 0 and "--log-format" in helped.stdout
    assert helped.stderr == ""

    port = free_port()
    err = tmp_path / "up.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*SPOOL, "up", "--port", str(port), "--data-dir", data_dir, "--node-id", "quiet"],
            env={**env, "SPOOL_API_KEY": KEY}, cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
        except RuntimeError as exc:
            raise AssertionError(err.read_text()) from exc
        listed = spool("keys", "list", "--data-dir", data_dir)  # joins the running servers
        assert listed.returncode == 0, listed.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, err.read_text()

    up_log = err.read_text()
    records = _records(up_log)  # JSON: stderr is a file here
    assert any(r["message"].startswith("spool is up") for r in records)
    assert _warnings(up_log) == []
    # `keys list` joins the running servers and may log nothing; what it logs is JSON.
    _records(listed.stderr)
    assert _warnings(listed.stderr) == []


def test_text_format_is_every_api_processs_format_when_asked(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    """`--log-format text` reaches uvicorn's worker processes, which serve the requests."""
    procs = SpoolProcesses(
        tmp_path,
        {
            "SPOOL_DATABASE_URL": fresh_database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_DATA_DIR": str(tmp_path / "data"),
        },
    )
    try:
        with procs.kept_logs():
            url = procs.api("--processes", "2", SPOOL_API_KEY=KEY, SPOOL_LOG_FORMAT="text")
            for n in range(4):
                answer = httpx.get(
                    f"{url}/jobs", headers={"x-api-key": KEY, "x-request-id": f"t-{n}"}
                )
                assert answer.status_code == 200
            _until(
                "the request lines",
                lambda: procs.log("api", tail=1_000_000).count("Request processed") >= 4,
                seconds=10,
            )
    finally:
        procs.stop_all()
    lines = procs.log("api", tail=1_000_000).splitlines()
    assert lines and not [line for line in lines if line.lstrip().startswith("{")]
    served = [line for line in lines if "request_id=t-" in line]
    assert len(served) == 4, lines
    assert all(" INFO api.requests: Request processed " in line for line in served)
    assert all("method=GET path=/jobs status_code=200 duration_ms=" in line for line in served)
    assert (
        len(
            {
                line.split("Started server process [")[1]
                for line in lines
                if "Started server process" in line
            }
        )
        == 2
    )


def test_a_bad_log_format_is_a_clear_cli_error() -> None:
    done = subprocess.run(
        [*SPOOL, "keys", "list"], env=child_env(SPOOL_LOG_FORMAT="xml"), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--log-format" in done.stderr and "'xml' is not one of" in done.stderr


def _record(
    msg: str, *args: object, exc: BaseException | None = None, **extra: Any
) -> logging.LogRecord:
    record = logging.LogRecord(
        "spool.test", logging.ERROR, __file__, 1, msg, args,
        (type(exc), exc, exc.__traceback__) if exc is not None else None,
    )  # fmt: skip
    record.__dict__.update(extra)
    return record


def test_a_json_line_holds_the_ids_at_hand_the_records_fields_and_its_exception() -> None:
    try:
        raise RuntimeError("connecting with password=hunter2-secret failed")
    except RuntimeError as exc:
        record = _record("stage %s failed", "mux", exc=exc, attempt=2, storage={"path": "a"})
    with log_context.bound(job_id="j-1", node_id="n-1"):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "stage mux failed"
    assert (line["level"], line["logger"]) == ("ERROR", "spool.test")
    assert (line["job_id"], line["node_id"]) == ("j-1", "n-1")
    assert "request_id" not in line and "task_id" not in line
    assert (line["attempt"], line["storage"]) == (2, {"path": "a"})
    assert "RuntimeError" in line["exc_info"] and "Traceback" in line["exc_info"]
    assert "hunter2-secret" not in line["exc_info"] and REDACTED in line["exc_info"]


def test_a_secret_in_a_quoted_field_is_redacted_in_json_as_in_text() -> None:
    """Encoded in a JSON string, quotes are escaped: redaction comes before the encoding."""
    record = _record(
        "config %s", {"secret_access_key": "wJalr/XUtnFE"}, config='{"password": "p4ss-word"}'
    )
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "wJalr" not in line and "p4ss-word" not in line, line


def test_the_format_is_the_one_named_else_text_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert chosen_format({}, io.StringIO()) == "json"
    assert chosen_format({}, Terminal()) == "text"
    assert chosen_format({"SPOOL_LOG_FORMAT": "json"}, Terminal()) == "json"
    assert chosen_format({"SPOOL_LOG_FORMAT": "text"}, io.StringIO()) == "text"
