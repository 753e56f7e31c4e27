"""A module run from its source file, whether or not ``make native`` compiled it.

A test that watches the code path itself (a spy put on a module's function, to show the
fast path is taken or a payload parsed once) needs the source: compiled modules call
each other directly, past any attribute a test replaces. The build is that same source
(``iot_guard.native`` refuses one that is not), so what the spy shows holds for it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def from_source(name: str) -> ModuleType:
    """A copy of module ``name`` executed from its ``.py`` file (its imports are the
    installed modules, compiled or not), as ``sys.modules`` entry ``<package>._source_<leaf>``
    (dataclasses look their module up there); made once."""
    package, _, leaf = name.rpartition(".")
    copy_name = f"{package}._source_{leaf}"
    if copy_name in sys.modules:
        return sys.modules[copy_name]
    importlib.import_module(name)
    # Beside the package's other files: a compiled module's own __file__ may name
    # another directory (mypyc's shared library sets it).
    path = Path(importlib.import_module(package).__path__[0]) / f"{leaf}.py"
    assert path.is_file(), f"no source file for {name}"
    spec = importlib.util.spec_from_file_location(copy_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[copy_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[copy_name]
        raise
    return module
