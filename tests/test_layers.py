"""The package's shape: a folder per layer and imports in one direction, checked from the source
(every import statement, at module level or inside a function), and --help without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "raider_bids"
LAYERS = ("physics", "preprocessing", "estimators", "choice", "bids_io", "reports", "workflows", "cli", "experiments")
# What each layer may import from the package besides the shared modules (errors, config,
# resources, provenance and the package's own __init__).
ALLOWED = {
    "physics": set(),
    "preprocessing": {"physics"},
    "estimators": {"physics"},
    "choice": {"physics"},
    "bids_io": {"physics"},
    "reports": {"physics", "bids_io"},
    "workflows": {"physics", "preprocessing", "estimators", "choice", "bids_io", "reports"},
    "cli": {"physics", "bids_io", "workflows"},
    "experiments": {"physics", "bids_io", "cli"},
}
SHARED = {"errors", "config", "resources", "provenance", ""}


def _imports(path: Path) -> set[str]:
    """The raider_bids modules `path` imports, as dotted names below the package."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]  # where relative imports start
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            targets = [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t.removeprefix("raider_bids").lstrip(".") for t in targets
                  if t == "raider_bids" or t.startswith("raider_bids.")}
    return found


def _layer(dotted: str) -> str:
    return dotted.split(".")[0]


def test_every_module_sits_in_a_layer_or_is_shared():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__main__"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS)
    assert top == SHARED - {""} | {"__init__"}


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_in_one_direction(layer):
    wrong = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = {m for m in _imports(path) if _layer(m) in LAYERS and _layer(m) not in ALLOWED[layer] | {layer}}
        if bad:
            wrong[path.relative_to(PACKAGE).as_posix()] = sorted(bad)
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer])} (and shared modules): {wrong}"


def test_shared_modules_import_no_layer():
    for name in SHARED - {""}:
        layers = {_layer(m) for m in _imports(PACKAGE / f"{name}.py")} & set(LAYERS)
        assert not layers, (name, layers)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_torch(argv):
    code = ("import sys\nfrom raider_bids.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False", out


def test_torch_free_modules_stay_torch_free():
    """The CLI's parser, the configuration, the provenance record, the parameter table and the
    reports load without torch (the reports and the group level need none of it)."""
    code = ("import sys\nimport raider_bids.cli.parser, raider_bids.config, raider_bids.provenance, "
            "raider_bids.physics.parameters, raider_bids.reports.pages, raider_bids.bids_io.derivatives\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
