"""The dependency rule between Spool's layers, as pyproject.toml's [tool.importlinter] states it.

`spool.domain` imports no other layer; `spool.api` and `spool.reactors` never import each other;
`spool.application` (the commands) imports neither of them nor the wiring; `spool.adapters`
imports none of those three; only the wiring modules of `spool` (serve, assembly, cli, ...)
wire, and no layer imports them (docs/architecture.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("domain", "adapters", "application", "reactors", "api", "migrations")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
WIRING = CONTRACTS[-1]["forbidden_modules"]
"""The modules of `spool` that wire the layers, as the last contract names them."""


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
    """An empty `spool` with the layers and a wiring module; `imports` maps a layer to a line."""
    root = tmp_path / "spool"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for wiring in WIRING:
        (root / f"{wiring.removeprefix('spool.')}.py").write_text("")
    for layer in LAYERS:
        package = root / layer
        package.mkdir()
        (package / "__init__.py").write_text(imports.get(layer, "") + "\n")
    return tmp_path


def test_the_rule_names_a_domain_module_that_imports_an_adapter(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"domain": "import spool.adapters"}))
    assert run.returncode != 0
    assert "domain imports no other Spool layer BROKEN" in run.stdout
    assert "spool.domain -> spool.adapters" in run.stdout


def test_the_rule_names_an_api_module_that_imports_a_reactor(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"api": "import spool.reactors"}))
    assert run.returncode != 0
    assert "api and reactors never import each other BROKEN" in run.stdout


def test_the_rule_names_a_layer_that_imports_the_wiring(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"reactors": "import spool.serve"}))
    assert run.returncode != 0
    assert "only spool wires: no layer imports the wiring modules BROKEN" in run.stdout


def test_the_rule_names_an_application_module_that_imports_the_api(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"application": "import spool.api"}))
    assert run.returncode != 0
    assert "application imports neither api, reactors nor the wiring BROKEN" in run.stdout


def test_the_rule_names_an_adapter_that_imports_the_application(tmp_path: Path) -> None:
    run = lint_imports(_tree(tmp_path, {"adapters": "import spool.application"}))
    assert run.returncode != 0
    assert "adapters import neither application, api, reactors nor the wiring BROKEN" in run.stdout


def test_a_wheel_installs_nothing_but_spool(tmp_path: Path) -> None:
    """Another installed package named `api` or `migrations` can never collide with Spool's."""
    # A copy of the tree, links kept: the build writes build/ and *.egg-info where it runs.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".azurite",
            "build",
            "artifacts",
            "*.egg-info",
            "*_cache",
            "__pycache__",
        ),
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("spool-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"spool"}
    for layer in (*LAYERS, "api/static"):
        assert any(name.startswith(f"spool/{layer}/") for name in names), layer
    assert any(name.startswith("spool/migrations/versions/0015") for name in names)
