"""The floors import one way: store <- analysis <- precompute, app <- cli (and the notebook API on top).

Each floor is a folder at the root, installed as ``loralens.<folder>``. The walk reads every import statement,
in functions too (the lazy ones are imports all the same), so a layer cannot be crossed by hiding it in a body.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("store", "analysis", "precompute", "app", "cli")
MAY_IMPORT = {
    "store": {"store"},
    "analysis": {"store", "analysis"},
    "precompute": {"store", "analysis", "precompute"},
    "app": {"store", "analysis", "app"},  # and precompute through SEAM alone
    "cli": set(FLOORS),
}
SEAM = "app/inference.py"
"""The app's one way into precompute: decoding an upload and running a model on it."""
MODEL_LIBRARIES = ("torch", "transformers", "peft", "nnsight", "streamlit")


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports (line, dotted name), relative imports resolved, wherever they stand."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base == "loralens":  # from loralens import app: the names are the floors
                out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, base))
    return out


def floor_of(module: str) -> str | None:
    """The floor a dotted module name belongs to (``loralens.app.cache`` and a bare ``app.cache`` alike)."""
    parts = module.split(".")
    if parts[0] == "loralens":
        parts = parts[1:]
    return parts[0] if parts and parts[0] in FLOORS else None


def crossings(root: Path = ROOT) -> list[str]:
    """Every import that runs against the floors, as ``file:line imports module``."""
    found = []
    for floor in FLOORS:
        for path in sorted((root / floor).rglob("*.py")):
            name = path.relative_to(root).as_posix()
            for line, module in imported_modules(path, root):
                target = floor_of(module)
                if target is None or target in MAY_IMPORT[floor]:
                    continue
                if floor == "app" and target == "precompute" and name == SEAM:
                    continue
                found.append(f"{name}:{line} imports {module}")
    return sorted(set(found))


def test_the_floors_import_one_way():
    assert crossings() == []


def test_the_walk_sees_a_lazy_import_against_the_floors(tmp_path):
    """The walk itself: an import of the app inside a precompute function, and one of the CLI from the app."""
    for floor in FLOORS:
        (tmp_path / floor).mkdir()
    (tmp_path / "precompute" / "trace.py").write_text("def commit():\n    from app.summary import summarise\n")
    (tmp_path / "app" / "page.py").write_text("from loralens.cli import main\nfrom loralens.store import schema\n")
    (tmp_path / "store" / "reader.py").write_text("import numpy\nfrom loralens.precompute import audio\n")
    assert crossings(tmp_path) == ["app/page.py:1 imports loralens.cli", "precompute/trace.py:2 imports app.summary",
                                   "store/reader.py:2 imports loralens.precompute"]


def test_analysis_imports_no_model_library_and_no_streamlit():
    """Directly (the walk) and through anything it imports (a fresh interpreter)."""
    direct = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in sorted((ROOT / "analysis").rglob("*.py"))
              for line, module in imported_modules(path) if module.split(".")[0] in MODEL_LIBRARIES]
    assert direct == []
    modules = sorted(".".join(("loralens", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                     for p in (ROOT / "analysis").rglob("*.py"))
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("floor", FLOORS)
def test_a_floor_has_one_name(floor):
    """``import app`` (or store, ...) fails even from the checkout's root: only ``loralens.app`` is the app."""
    result = subprocess.run([sys.executable, "-c", f"import {floor}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and f"loralens.{floor}" in result.stderr
    elsewhere = subprocess.run([sys.executable, "-c", f"import loralens.{floor}"], capture_output=True, text=True,
                               cwd=ROOT.parent)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]


def test_every_package_folder_installs():
    """pyproject.toml lists the packages a wheel holds: a folder of modules left off it is missing from every
    install but the editable one (tests run on that, so nothing else would notice)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"loralens"} | {".".join(("loralens", *path.parent.relative_to(ROOT).parts))
                              for floor in FLOORS for path in (ROOT / floor).rglob("*.py")
                              if "__pycache__" not in path.parts}
    assert folders == listed
