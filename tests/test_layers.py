"""The code's shape, checked: the import-linter contracts in pyproject.toml (layers, gradio only under ui/, the CLI
imported by nothing but itself), every module placed in a layer, and the environment read in one module only."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mrad_core"
# torchrun's own variables, read where the process group is set up
TORCHRUN = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


def _contracts() -> list:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "import-linter contracts are broken: run `lint-imports` for the details"


def _modules() -> set:
    """Every module of the package, as its top-level name under mrad_core (a subpackage counts once)."""
    names = set()
    for path in PACKAGE.iterdir():
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
            names.add(path.stem if path.suffix == ".py" else path.name)
    return names


def test_every_module_has_a_layer():
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    placed = {m.strip() for layer in layers for m in re.split(r"[|:]", layer)}
    missing = sorted(_modules() - placed)
    assert not missing, f"modules in no layer of pyproject.toml's layers contract: {missing}"


def test_a_broken_layer_is_caught(tmp_path):
    """The contracts would fail if a low layer imported a high one (the check is not vacuous)."""
    from importlinter.cli import lint_imports

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from . import high\n")
    (pkg / "high.py").write_text("from . import low\n")
    (tmp_path / "cfg.toml").write_text('[tool.importlinter]\nroot_package = "pkg"\n[[tool.importlinter.contracts]]\n'
                                       'name = "l"\ntype = "layers"\nlayers = ["pkg.high", "pkg.low"]\n')
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        assert lint_imports(config_filename=str(tmp_path / "cfg.toml"), no_cache=True) != 0
    finally:
        sys.path.remove(str(tmp_path))


def _env_reads(path: Path) -> list:
    """(line, key or None) of every os.environ / os.getenv use in a file."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(node)
    out = []
    for node in found:
        key = None
        for parent in ast.walk(tree):  # the key of os.environ.get("X") / os.environ["X"] / os.getenv("X")
            if isinstance(parent, ast.Call) and parent.args and isinstance(parent.args[0], ast.Constant) and \
                    (parent.func is node or getattr(parent.func, "value", None) is node):
                key = parent.args[0].value
            elif isinstance(parent, ast.Subscript) and parent.value is node and isinstance(parent.slice, ast.Constant):
                key = parent.slice.value
        out.append((node.lineno, key))
    return out


def test_only_settings_reads_the_environment():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "mrad_core/settings.py":
            continue
        for line, key in _env_reads(path):
            if rel == "mrad_core/distributed.py" and key in TORCHRUN:
                continue
            offenders.append(f"{rel}:{line} ({key or 'os.environ'})")
    assert not offenders, "the environment is read outside mrad_core/settings.py: " + ", ".join(offenders)


@pytest.mark.parametrize("source, expected", [
    ("import os\nx = os.environ.get('MRAD_X')\n", [(2, "MRAD_X")]),
    ("import os\nx = os.getenv('Y')\n", [(2, "Y")]),
    ("import os\nx = os.environ['RANK']\n", [(2, "RANK")]),
    ("import os\nenv = dict(os.environ)\n", [(2, None)]),
    ("x = {'environ': 1}\n", []),
])
def test_the_environment_scan_finds_reads(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _env_reads(path) == expected
