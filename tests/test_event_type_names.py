"""Outside `domain/`, event types are named from the event classes (`JobCreated.__name__`) or an
aggregate's `EVENT_TYPES`, never spelled as strings: renaming an event then cannot leave a
follower silently waiting for a type that no longer exists."""

from __future__ import annotations

import ast
from pathlib import Path

import spool.adapters.event_store  # noqa: F401  # registers every aggregate's events
from spool.domain.events import registry

ROOT = Path(__file__).resolve().parent.parent

CHECKED = ["api", "adapters", "application", "spool", "bench", "reactors"]
NOT_YET = {"reactors/verify.py", "reactors/projections"}
"""Read models and verification, still spelling their types (issue 21, point 3 moves them)."""


def _spelled(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(ROOT)}:{n.lineno}: {n.value!r}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names
    ]


def test_no_module_outside_domain_spells_an_event_type_as_a_string() -> None:
    names = set(registry.names())
    found: list[str] = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[0] == "spool" and len(relative.parts) > 2:
                continue  # spool/<layer> are links to the layers, checked in their own folders
            if any(str(relative).startswith(skip) for skip in NOT_YET):
                continue
            found += _spelled(path, names)
    assert found == []
