"""What each task type does on a node, and what a node refuses to do."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.reactors.task_types import (
    EXECUTORS,
    TaskContext,
    TaskError,
    TaskRefused,
    advertised,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/to-metadata"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        if self.path.startswith("/to-private"):
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/admin")
            self.end_headers()
            return
        body = b"hello from loopback"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local_http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def ctx(tmp_path: Path, allowlist: tuple[str, ...] = (), **settings: object) -> TaskContext:
    s = Settings(data_dir=tmp_path, url_allowlist=allowlist, **settings)  # type: ignore[arg-type]
    return TaskContext("node-t", s, UrlGuard(allowlist), tmp_path / "work")


async def test_echo_returns_the_payload(tmp_path: Path) -> None:
    assert await EXECUTORS["echo"]({"message": "Hello"}, ctx(tmp_path)) == {
        "echo": {"message": "Hello"}
    }


async def test_sleep_takes_seconds_or_duration(tmp_path: Path) -> None:
    slept = await EXECUTORS["sleep"]({"duration": 0.05}, ctx(tmp_path))
    assert 0.04 <= slept["slept_seconds"] < 1
    with pytest.raises(TaskRefused, match=r"payload\.seconds"):
        await EXECUTORS["sleep"]({"seconds": "long"}, ctx(tmp_path))


async def test_system_info_describes_the_machine(tmp_path: Path) -> None:
    info = await EXECUTORS["system_info"]({}, ctx(tmp_path))
    assert info["device_id"] == "node-t" and info["cpu_count"] >= 1
    assert info["memory_total_gb"] > 0


async def test_command_is_refused_without_the_nodes_opt_in(tmp_path: Path) -> None:
    with pytest.raises(TaskRefused, match="SPOOL_ALLOW_COMMAND_TASKS"):
        await EXECUTORS["command"]({"command": "echo hi"}, ctx(tmp_path))
    assert "command" not in advertised(Settings())


async def test_command_runs_without_a_shell_once_opted_in(tmp_path: Path) -> None:
    c = ctx(tmp_path, allow_command_tasks=True)
    done = await EXECUTORS["command"]({"command": "echo hi; rm -rf /"}, c)
    assert done["stdout"] == "hi; rm -rf /\n"  # the `;` is an argument, not a shell operator
    with pytest.raises(TaskError, match="exited with"):
        await EXECUTORS["command"]({"command": ["false"]}, c)


async def test_python_eval_is_refused_without_the_nodes_opt_in(tmp_path: Path) -> None:
    with pytest.raises(TaskRefused, match="SPOOL_ALLOW_PYTHON_EVAL"):
        await EXECUTORS["python_eval"]({"expression": "1 + 1"}, ctx(tmp_path))
    assert "python_eval" not in advertised(Settings())


async def test_python_eval_evaluates_expressions_safely_within_limits(tmp_path: Path) -> None:
    c = ctx(tmp_path, allow_python_eval=True)
    run = EXECUTORS["python_eval"]
    assert (await run({"expression": "2 ** 10 + x", "variables": {"x": 1}}, c))["result"] == 1025
    for attack in (
        "__import__('os').system('id')",
        "(1).__class__.__bases__",
        "open('/etc/passwd').read()",
        "x.__class__",
    ):
        with pytest.raises(TaskRefused, match="python_eval failed"):
            await run({"expression": attack, "variables": {"x": 1}}, c)
    with pytest.raises(TaskRefused, match="longer than 1000"):
        await run({"expression": "1+" * 600 + "1"}, c)
    with pytest.raises(TaskRefused):
        await run({"expression": "9 ** 9 ** 9"}, c)


async def test_http_request_reaches_an_allowlisted_host(tmp_path: Path, local_http: str) -> None:
    answer = await EXECUTORS["http_request"](
        {"url": f"{local_http}/hello"}, ctx(tmp_path, ("127.0.0.1/32",))
    )
    assert answer["status_code"] == 200 and answer["body"] == "hello from loopback"


async def test_http_request_is_refused_for_a_private_target_not_allowlisted(
    tmp_path: Path, local_http: str
) -> None:
    with pytest.raises(TaskRefused, match="loopback"):
        await EXECUTORS["http_request"]({"url": f"{local_http}/hello"}, ctx(tmp_path))
    with pytest.raises(TaskRefused, match="private"):
        await EXECUTORS["http_request"]({"url": "http://192.168.0.1/"}, ctx(tmp_path))


@pytest.mark.parametrize(
    ("path", "why"), [("/to-metadata", "metadata"), ("/to-private", "private")]
)
async def test_http_request_checks_every_redirect(
    tmp_path: Path, local_http: str, path: str, why: str
) -> None:
    with pytest.raises(TaskRefused, match=why):
        await EXECUTORS["http_request"](
            {"url": local_http + path}, ctx(tmp_path, ("127.0.0.1/32",))
        )


@pytest.mark.parametrize(
    "attack",
    [
        "().__class__.__bases__[0].__subclasses__()",
        "[c for c in ().__class__.__base__.__subclasses__()]",
        "getattr((), '__class__')",
        "type(1)",
        "eval('1 + 1')",
        "exec('import os')",
        "compile('1', 'x', 'eval')",
        "globals()",
        "(lambda: 1)()",
        "'{0.__class__.__bases__}'.format(1)",
        "'{x.__class__}'.format_map({'x': 1})",
        "f'{().__class__}'",
        "x.__class__.__mro__",
        "'a' * 10 ** 9",
        "[1] * 10 ** 9",
        "10 ** 10 ** 10",
        "2 ** 99999999",
    ],
)
async def test_python_eval_refuses_escapes_and_resource_bombs(tmp_path: Path, attack: str) -> None:
    c = ctx(tmp_path, allow_python_eval=True)
    with pytest.raises(TaskRefused) as refused:
        await EXECUTORS["python_eval"]({"expression": attack, "variables": {"x": 1}}, c)
    # Whatever the reason, nothing of the interpreter's insides comes back.
    assert "<class" not in str(refused.value)
