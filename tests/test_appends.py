"""Every append goes through the one repository (`adapters/repository.py`): a command decides on
the state it read (`execute`, `execute_many`), a fact is recorded (`record`, `record_many`).
No other module calls the event store's `append` or `append_many`, so the rule of
docs/architecture.md ("Decide or record") cannot be walked around one call site at a time."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECKED = ["api", "adapters", "application", "domain", "reactors", "spool", "migrations"]

ALLOWED = {
    Path("adapters/repository.py"),  # the one place that appends
    Path("adapters/event_store.py"),  # the store itself
    Path("adapters/timed_event_store.py"),  # the store, timed for /metrics
}


def _store_append(call: ast.Call) -> bool:
    """A call of the store's `append_many`, or of an `append` with a store's arguments (a
    list's `append` takes one argument; the store's takes a stream, events and a version)."""
    if not isinstance(call.func, ast.Attribute):
        return False
    if call.func.attr == "append_many":
        return True
    return call.func.attr == "append" and (len(call.args) > 1 or bool(call.keywords))


def _appends(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(ROOT)}:{n.lineno}: {ast.unparse(n.func)}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _store_append(n)
    ]


def test_no_module_but_the_repository_appends_to_the_event_store() -> None:
    found: list[str] = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[0] == "spool" and len(relative.parts) > 2:
                continue  # spool/<layer> are links to the layers, checked in their own folders
            if relative in ALLOWED:
                continue
            found += _appends(path)
    assert found == []


def test_the_check_sees_a_direct_append() -> None:
    source = (
        "async def f(store, conn):\n"
        "    await store.append('job-1', [], None)\n"
        "    await self.store.append_many([], durable=False)\n"
        "    rows.append(1)\n"
    )
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    assert [ast.unparse(c.func) for c in calls if _store_append(c)] == [
        "store.append",
        "self.store.append_many",
    ]
