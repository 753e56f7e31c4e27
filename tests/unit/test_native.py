"""The compiled core's bookkeeping (iot_guard/native.py): a build is used only when it is
the build of the sources beside it; clean removes every compiled file. No compiler here:
the layouts are made by hand in a temporary folder."""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from iot_guard import native

SUFFIX = EXTENSION_SUFFIXES[0]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``iot_guard`` with two modules on the build list and one off it."""
    package = tmp_path / "iot_guard"
    (package / "mqtt").mkdir(parents=True)
    for name in ("mqtt/a.py", "mqtt/b.py", "c.py"):
        (package / name).write_text(f"# {name}\n")
    monkeypatch.setattr(native, "ROOT", str(tmp_path))
    monkeypatch.setattr(native, "PACKAGE_DIR", str(package))
    monkeypatch.setattr(native, "STAMP", str(package / "_native.sha256"))
    monkeypatch.setattr(native, "MODULES", ("iot_guard/mqtt/a.py", "iot_guard/mqtt/b.py"))
    monkeypatch.setattr(native, "EXTENSIONS", ())
    monkeypatch.setattr(native, "SOURCES", native.MODULES)
    return tmp_path


def build_by_hand(root: Path, modules: tuple[str, ...] = native.MODULES) -> None:
    """What a successful build leaves: a compiled file per module, the group's library,
    and the stamp of the sources it was built from."""
    for path in modules:
        (root / (os.path.splitext(path)[0] + SUFFIX)).write_bytes(b"")
    (root / "iot_guard" / f"_native__mypyc{SUFFIX}").write_bytes(b"")
    Path(native.STAMP).write_text(
        "".join(f"{native._digest(path)}  {path}\n" for path in modules))


def test_no_build_is_the_source_and_nothing_to_check(tree: Path) -> None:
    assert native.stale() == []
    native.check()  # no error: the source runs


def test_a_build_of_these_sources_is_used(tree: Path) -> None:
    build_by_hand(tree, native.MODULES)
    assert native.stale() == []
    native.check()
    assert native.main(["status"]) == 0


def test_a_source_changed_after_the_build_is_refused_with_its_name(tree: Path) -> None:
    build_by_hand(tree, native.MODULES)
    (tree / "iot_guard/mqtt/b.py").write_text("# b, edited\n")
    assert native.stale() == ["iot_guard/mqtt/b.py"]
    with pytest.raises(ImportError) as refused:
        native.check()
    assert str(refused.value) == (
        "iot_guard: iot_guard/mqtt/b.py changed after the compiled modules were built: run "
        "`make native` to rebuild them, or `make clean-native` to run the source")
    assert native.main(["status"]) == 1


def test_a_build_without_its_stamp_is_refused(tree: Path) -> None:
    build_by_hand(tree, native.MODULES)
    os.remove(native.STAMP)  # e.g. a build that stopped before writing it
    assert native.stale() == list(native.MODULES)
    with pytest.raises(ImportError, match=r"iot_guard/mqtt/a.py changed .* \(and 1 more\)"):
        native.check()


def test_a_module_compiled_by_a_build_with_another_list_is_refused(tree: Path) -> None:
    build_by_hand(tree, native.MODULES)
    (tree / ("iot_guard/c" + SUFFIX)).write_bytes(b"")  # c.py is not on today's list
    assert native.stale() == ["iot_guard/c.py"]
    with pytest.raises(ImportError):
        native.check()


def test_clean_removes_every_compiled_file_and_the_stamp(tree: Path) -> None:
    build_by_hand(tree, native.MODULES)
    (tree / ("iot_guard/c" + SUFFIX)).write_bytes(b"")
    native.clean()
    left = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert left == ["iot_guard/c.py", "iot_guard/mqtt/a.py", "iot_guard/mqtt/b.py"]
    assert native.stale() == []


def test_the_installed_package_is_wholly_compiled_or_wholly_source(
    request: pytest.FixtureRequest,
) -> None:
    """This process imported iot_guard, so its build (if any) matched; and under
    ``make test`` (``--expect-native``) the suite runs against a complete build."""
    from iot_guard.audit import hashes

    compiled = native._built()
    built = [path for path in native.SOURCES if path in compiled]
    assert built in ([], list(native.SOURCES))
    assert hashes.NATIVE is bool(built)
    if request.config.getoption("--expect-native"):
        assert built == list(native.SOURCES), "make test ran without the compiled core"
        import iot_guard.session.session as session

        assert not session.__file__.endswith(".py")
        assert hashes.leaf_hash is not hashes.py_leaf_hash


def test_a_c_source_is_held_to_its_build_like_a_module(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension of our own C (``EXTENSIONS``) is stamped and checked the same way."""
    (tree / "iot_guard/d.c").write_text("/* d */\n")
    monkeypatch.setattr(native, "EXTENSIONS", ("iot_guard/d.c",))
    monkeypatch.setattr(native, "SOURCES", (*native.MODULES, "iot_guard/d.c"))
    build_by_hand(tree, native.SOURCES)
    assert native._built()["iot_guard/d.c"].endswith("d" + SUFFIX)
    assert native.stale() == []
    (tree / "iot_guard/d.c").write_text("/* d, edited */\n")
    assert native.stale() == ["iot_guard/d.c"]
    native.clean()
    assert not (tree / ("iot_guard/d" + SUFFIX)).exists()
