"""The built wheel: what a `pip install iot-guard` user gets (issue 9, points 13 and 15)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Build from a copy so the source tree gets no build/ or *.egg-info folders.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("iot_guard", "simulator", "device_policies"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("iot_guard-*.whl")
    return zipfile.ZipFile(built)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_the_example_policy_ships_inside_the_package(wheel: zipfile.ZipFile) -> None:
    """The pytest plugin's default policy is package data, the same files as the
    repository's device_policies/ (one source: simulator/example_policy links to it)."""
    for source in sorted((ROOT / "device_policies").glob("*.yaml")):
        assert wheel.read(f"simulator/example_policy/{source.name}") == source.read_bytes()


def test_the_license_ships_and_matches_the_declared_one(wheel: zipfile.ZipFile) -> None:
    meta = Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert "Apache-2.0" in (meta["License"] or meta["License-Expression"] or "")
    licenses = [n for n in wheel.namelist() if n.endswith("LICENSE")]
    assert licenses, wheel.namelist()
    text = wheel.read(licenses[0]).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_dependencies_are_what_the_product_imports(wheel: zipfile.ZipFile) -> None:
    """Every third-party module the shipped code imports is declared, and every runtime
    dependency is imported by the shipped code (aiomqtt, used only by tests, is not one)."""
    meta = Parser().parsestr(_dist_info(wheel, "METADATA"))
    runtime = {
        _normal(re.split(r"[<>=!~; \[]", r, maxsplit=1)[0])
        for r in meta.get_all("Requires-Dist") or []
        if "extra ==" not in r
    }
    imported: set[str] = set()
    for name in wheel.namelist():
        if name.endswith(".py") and name.split("/")[0] in ("iot_guard", "simulator"):
            if name.endswith("pytest_plugin.py"):
                continue  # runs inside pytest, which the user's suite has
            for node in ast.walk(ast.parse(wheel.read(name))):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {
        m for m in imported
        if m not in sys.stdlib_module_names and m not in ("iot_guard", "simulator")
    }
    extras = {
        _normal(re.split(r"[<>=!~; \[]", r, maxsplit=1)[0])
        for r in meta.get_all("Requires-Dist") or []
        if "extra ==" in r
    }
    # An optional feature may import what its extra's package brings (mcp brings uvicorn).
    for extra in list(extras):
        try:
            brought = metadata.requires(extra) or []
        except metadata.PackageNotFoundError:
            continue
        extras |= {_normal(re.split(r"[<>=!~; \[(]", r, maxsplit=1)[0]) for r in brought}
    dists_of = metadata.packages_distributions()
    undeclared = {
        m for m in third_party
        if not {_normal(d) for d in dists_of.get(m, [m])} & (runtime | extras)
    }
    # testcontainers: the broker harness's optional Docker fallback (imported lazily).
    assert undeclared <= {"testcontainers"}, undeclared
    used = {_normal(d) for m in third_party for d in dists_of.get(m, [m])}
    assert runtime <= used, runtime - used
    assert "aiomqtt" not in runtime  # only the tests use it


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_entry_points(wheel: zipfile.ZipFile) -> None:
    text = _dist_info(wheel, "entry_points.txt")
    assert "iot-guard = iot_guard.cli:main" in text
    assert "[iot_guard.commands]\nsimulate = simulator.cli:register" in text
    assert "iot_guard_simulator = simulator.pytest_plugin" in text
