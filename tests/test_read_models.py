"""Rules every read model keeps (adapters/read_models/, docs/architecture.md "Projections")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import spool.adapters.event_store  # noqa: F401 - registers every event type
from spool.adapters.read_models import all_projections
from spool.domain.events import registry

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [
    *sorted((ROOT / "adapters" / "read_models").glob("*.py")),
    ROOT / "reactors" / "verify.py",
]


def _event_type_names() -> set[str]:
    return {name for p in all_projections() for name in p.event_types} | set(registry.names())


def test_read_models_name_event_types_through_their_classes() -> None:
    """A renamed event class cannot leave a read model following a type that no longer exists:
    no string in a read model (SQL included) spells an event type's name."""
    names = _event_type_names()
    word = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    spelled = []
    for path in CHECKED:
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and (found := word.search(node.value))
            ):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {found.group(0)}")
    assert spelled == []


def test_every_projection_follows_only_event_types_that_exist() -> None:
    known = set(registry.names())
    for p in all_projections():
        assert p.event_types <= known, p.name
