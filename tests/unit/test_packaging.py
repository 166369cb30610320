"""pyproject.toml ships everything the code needs: every package and every data file."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dir(package: str) -> Path:
    top, *rest = package.split(".")
    base = ROOT / CONFIG.get("package-dir", {}).get(top, top)
    return base.joinpath(*rest)


def _shipped_files(package: str) -> set[Path]:
    base = _package_dir(package)
    files = {p for p in base.glob("*.py")}
    for pattern in CONFIG.get("package-data", {}).get(package, []):
        files |= {p for p in base.glob(pattern) if p.is_file()}
    return files


def test_every_python_package_is_listed():
    """Each directory holding Python modules under a shipped top-level package is in
    the explicit package list, so a new subpackage cannot silently miss the wheel."""
    listed = set(CONFIG["packages"])
    for package in listed:
        if "." in package or package in CONFIG.get("package-dir", {}):
            continue
        for module in _package_dir(package).rglob("*.py"):
            if "__pycache__" in module.parts:
                continue
            dotted = ".".join(module.parent.relative_to(ROOT).parts)
            assert dotted in listed, f"{module.relative_to(ROOT)} is in package {dotted}, missing from pyproject packages"


def test_every_data_file_is_shipped():
    """Non-Python files inside packages (contracts, presets, schema snapshots, templates)
    match a package-data pattern."""
    shipped: set[Path] = set()
    for package in CONFIG["packages"]:
        shipped |= _shipped_files(package)
    for package in CONFIG["packages"]:
        base = _package_dir(package)
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc",):
                continue
            owner = max((p for p in CONFIG["packages"] if path.is_relative_to(_package_dir(p))), key=len)
            if path.suffix == ".py" and path.parent == _package_dir(owner):
                continue
            assert path in shipped, f"{path.relative_to(ROOT)} would be left out of the wheel"
