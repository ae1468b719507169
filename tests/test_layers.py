"""The dependency rule between Spool's layers, as pyproject.toml's [tool.importlinter] states it.

`domain` imports no other layer; `api` and `reactors` never import each other; `adapters`
imports neither of them nor `spool`; only `spool` wires (docs/architecture.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("domain", "adapters", "reactors", "api", "spool", "migrations")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the packages in `tree`, with the repository's contracts."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",  # the cache would be written into the tree under test
            "--no-logo",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_keep_the_dependency_rule() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, f"a layer breaks the rule:\n{run.stdout}{run.stderr}"


def _tree(tmp_path: Path, imports: dict[str, str]) -> Path:
    """Empty packages named like the layers; `imports` maps a layer to the line it holds."""
    for layer in LAYERS:
        package = tmp_path / layer
        package.mkdir()
        (package / "__init__.py").write_text(imports.get(layer, "") + "\n")
    return tmp_path


def test_the_rule_names_a_domain_module_that_imports_an_adapter(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"domain": "import adapters"}))
    assert run.returncode != 0
    assert "domain imports no other Spool layer BROKEN" in run.stdout
    assert "domain -> adapters" in run.stdout


def test_the_rule_names_an_api_module_that_imports_a_reactor(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"api": "import reactors"}))
    assert run.returncode != 0
    assert "api and reactors never import each other BROKEN" in run.stdout


def test_the_rule_names_a_layer_that_imports_spool(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"reactors": "import spool"}))
    assert run.returncode != 0
    assert "only spool wires: no layer imports spool BROKEN" in run.stdout
