"""What each task type does on a node: `echo`, `sleep`, `system_info`, `http_request`, and the
two that run code, `command` and `python_eval`, which a node runs only when it opted in.

An executor takes the task's payload and returns its `result_data` (JSON-able), or raises
TaskError (a retry may help) or TaskRefused (it never will: bad payload, not allowed here).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from spool.adapters import sysinfo
from spool.adapters.guarded_http import guarded_client
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard, UrlRefused

MAX_SLEEP_SECONDS = 3600.0
MAX_REDIRECTS = 5
MAX_HTTP_BODY = 256 * 1024
"""An HTTP response body beyond this is cut: the result travels in an event."""
MAX_OUTPUT = 64 * 1024
"""Of a command's stdout and stderr, each keeps its last this many bytes."""
MAX_EXPRESSION = 1000
EVAL_SECONDS = 5.0
"""The hard wall-clock limit of one `python_eval`, whatever the task's own timeout."""
EVAL_MEMORY = 256 * 1024 * 1024
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class TaskError(Exception):
    """The task failed; another attempt may succeed."""


class TaskRefused(TaskError):
    """The task cannot run as given, here or anywhere: retrying will not help."""


BASE_ENVIRONMENT: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "TZ")
"""Of the node's environment, what every task's child process sees: how to find programs and
the locale. Nothing else of the node's: its settings, keys and storage credentials stay out."""


def child_environment(node: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str]:
    """The environment of a task's child process: the base variables the node has, plus the
    ones the task may see (`TaskSubmitted.env`, which an admin's grant allowed)."""
    return {name: node[name] for name in (*BASE_ENVIRONMENT, *allowed) if name in node}


@dataclass(frozen=True)
class TaskContext:
    """What an executor may use of its node."""

    node_id: str
    settings: Settings
    guard: UrlGuard
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    """The environment of any process the task starts (see `child_environment`)."""


Executor = Callable[[dict[str, Any], TaskContext], Awaitable[Any]]


def _number(payload: dict[str, Any], *names: str, default: float) -> float:
    for name in names:
        if name in payload:
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise TaskRefused(f"payload.{name} must be a non-negative number")
            return float(value)
    return default


async def echo(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """The payload, as given."""
    return {"echo": payload}


async def sleep(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Sleep `seconds` (or `duration`), at most an hour."""
    seconds = min(_number(payload, "seconds", "duration", default=1.0), MAX_SLEEP_SECONDS)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return {"slept_seconds": round(time.monotonic() - started, 3)}


async def system_info(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """What the node's machine is and how busy it is, as psutil sees it."""
    caps = sysinfo.capabilities(ctx.workdir, [])
    usage = await asyncio.to_thread(sysinfo.usage, ctx.workdir)  # may wait out a CPU span
    return {
        "device_id": ctx.node_id,
        "hostname": sysinfo.hostname(),
        "platform": caps.platform,
        "platform_release": platform.release(),
        "architecture": platform.machine(),
        "python_version": platform.python_version(),
        "cpu_count": caps.cpu_count,
        "cpu_percent": usage.cpu_percent,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_gb": caps.memory_total_gb,
        "memory_used_percent": round(100 * usage.memory_used / usage.memory_total, 1)
        if usage.memory_total
        else None,
        "storage_total_gb": caps.storage_total_gb,
        "storage_free_gb": round(usage.disk_free / 1024**3, 2),
        "has_gpu": caps.has_gpu,
        "boot_time": psutil.boot_time(),
    }


def _peer_address(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    peer = stream.get_extra_info("server_addr")
    return str(peer[0]) if peer else None


async def http_request(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """One HTTP request under the download SSRF rules: every hop and every peer is checked.

    Payload: `url`, `method` (GET), `headers`, `body` (text) or `json`, `timeout` (s, 30).
    """
    url = payload.get("url")
    if not isinstance(url, str) or not url:
        raise TaskRefused("payload.url is required")
    method = str(payload.get("method", "GET")).upper()
    if method not in HTTP_METHODS:
        raise TaskRefused(f"payload.method must be one of {', '.join(sorted(HTTP_METHODS))}")
    headers = payload.get("headers") or {}
    if not isinstance(headers, dict):
        raise TaskRefused("payload.headers must be an object")
    timeout = min(_number(payload, "timeout", default=30.0), 300.0)
    content: bytes | None = None
    if "json" in payload:
        content = json.dumps(payload["json"]).encode()
        headers = {"Content-Type": "application/json", **headers}
    elif "body" in payload:
        content = str(payload["body"]).encode()
    started = time.monotonic()
    # No proxies from the environment: a proxy would connect where the guard never looks.
    # Each connection is judged again when opened (DNS rebinding), before a byte is sent.
    async with guarded_client(ctx.guard, timeout=timeout) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                await ctx.guard.check_url_async(url)
            except UrlRefused as exc:
                raise TaskRefused(str(exc)) from None
            try:
                async with client.stream(
                    method,
                    url,
                    headers={str(k): str(v) for k, v in headers.items()},
                    content=content,
                ) as response:
                    peer = _peer_address(response)
                    if peer is not None:
                        host = httpx.URL(url).host
                        try:  # a name that resolved again to another address (DNS rebinding)
                            ctx.guard.check_address(host, peer)
                        except UrlRefused as exc:
                            raise TaskRefused(str(exc)) from None
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        if response.status_code in (301, 302, 303) and method != "HEAD":
                            method, content = "GET", None
                        continue
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_HTTP_BODY:
                            break
            except UrlRefused as exc:
                raise TaskRefused(str(exc)) from None
            except httpx.HTTPError as exc:
                raise TaskError(f"HTTP request failed: {type(exc).__name__}: {exc}") from None
            text = body[:MAX_HTTP_BODY].decode(response.encoding or "utf-8", errors="replace")
            return {
                "url": url,
                "status_code": response.status_code,
                "headers": dict(response.headers),
                "body": text,
                "truncated": len(body) > MAX_HTTP_BODY,
                "elapsed_seconds": round(time.monotonic() - started, 3),
            }
    raise TaskError(f"More than {MAX_REDIRECTS} redirects")


async def command(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Run a program (no shell) in a scratch folder: `command` as a string or a list of args."""
    if not ctx.settings.allow_command_tasks:
        raise TaskRefused(
            f"command tasks are disabled on node {ctx.node_id} "
            "(start it with SPOOL_ALLOW_COMMAND_TASKS=1 to allow them)"
        )
    given = payload.get("command")
    if isinstance(given, str):
        args = shlex.split(given)
    elif isinstance(given, list) and all(isinstance(a, str) for a in given):
        args = list(given)
    else:
        raise TaskRefused("payload.command must be a string or a list of strings")
    if not args:
        raise TaskRefused("payload.command is empty")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=ctx.workdir,
            env=ctx.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise TaskRefused(f"cannot run {args[0]!r}: {exc.strerror or exc}") from None
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # timed out or cancelled: the program goes too
        proc.kill()
        await proc.wait()
        raise
    stderr = err[-MAX_OUTPUT:].decode(errors="replace")
    if proc.returncode != 0:
        raise TaskError(f"exited with {proc.returncode}: {stderr[-500:]}".strip())
    return {
        "return_code": proc.returncode,
        "stdout": out[-MAX_OUTPUT:].decode(errors="replace"),
        "stderr": stderr,
    }


# The evaluator runs in a child process with memory and CPU limits, killed at its deadline:
# a thread could not be stopped, and `simpleeval` still allows costly arithmetic.
_EVAL_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[2]), int(sys.argv[2]) + 1))
from simpleeval import SimpleEval
job = json.loads(sys.stdin.read())
functions = {"abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float,
             "str": str, "bool": bool, "len": len, "sum": sum, "sorted": sorted}
names = {"True": True, "False": False, "None": None, **job["variables"]}
try:
    value = SimpleEval(functions=functions, names=names).eval(job["expression"])
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
try:
    print(json.dumps({"result": value}))
except (TypeError, ValueError):
    try:
        print(json.dumps({"result": repr(value)}))
    except ValueError as e:
        print(json.dumps({"error": f"the result cannot be shown: {e}"}))
"""


async def python_eval(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Evaluate one expression with `simpleeval` (no attributes, no imports, no `eval`).

    Payload: `expression` (at most 1000 characters), optional `variables` (JSON values).
    """
    if not ctx.settings.allow_python_eval:
        raise TaskRefused(
            f"python_eval tasks are disabled on node {ctx.node_id} "
            "(start it with SPOOL_ALLOW_PYTHON_EVAL=1 to allow them)"
        )
    expression = payload.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise TaskRefused("payload.expression must be a non-empty string")
    if len(expression) > MAX_EXPRESSION:
        raise TaskRefused(f"payload.expression is longer than {MAX_EXPRESSION} characters")
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        raise TaskRefused("payload.variables must be an object")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _EVAL_CHILD,
        str(EVAL_MEMORY),
        str(int(EVAL_SECONDS)),
        env=ctx.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    job = json.dumps({"expression": expression, "variables": variables}).encode()
    try:
        async with asyncio.timeout(EVAL_SECONDS):
            out, err = await proc.communicate(job)
    except (TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise TaskRefused(f"the expression ran longer than {EVAL_SECONDS:g} s") from None
        raise
    try:
        answer = json.loads(out.decode() or "{}")
    except ValueError:
        answer = {}
    if "result" in answer:
        return {"expression": expression, "result": answer["result"]}
    why = answer.get("error") or err.decode(errors="replace")[-300:] or "the evaluator died"
    if proc.returncode and proc.returncode < 0:
        why = "the expression exceeded its CPU or memory limit"
    raise TaskRefused(f"python_eval failed: {why}")


EXECUTORS: dict[str, Executor] = {
    "echo": echo,
    "sleep": sleep,
    "system_info": system_info,
    "http_request": http_request,
    "command": command,
    "python_eval": python_eval,
}


def advertised(settings: Settings) -> list[str]:
    """The task types this node runs: the code-running ones only when it opted in."""
    off = {
        "command": not settings.allow_command_tasks,
        "python_eval": not settings.allow_python_eval,
    }
    return [name for name in EXECUTORS if not off.get(name, False)]


def has_internet() -> bool:
    """Whether this machine has a route to the public internet (a lookup; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("1.1.1.1", 53))
        except OSError:
            return False
    return True
