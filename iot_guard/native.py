"""The per-packet core compiled to C by mypyc, and the check that it is the source's.

The modules in ``MODULES`` are ordinary typed Python (mypy checks them strictly); mypyc,
mypy's compiler, turns them into C extensions that run the same code without the
interpreter's per-call and per-attribute overhead: about 1.3x faster per shadow update
and 1.6x per relayed packet on the bench machine. ``make native`` builds them in place
(``python iot_guard/native.py build``: a script, so it runs when ``import iot_guard`` would
refuse); ``make clean-native`` removes them and the
source runs as it is. Nothing else changes: same source, same tests, same behaviour.
The build also compiles ``EXTENSIONS``, C of our own with a definition in Python beside it
that runs when it is not built (the audit chain's SHA-256 calls: ``audit/hashes.py``).

A compiled module must never stand in for a source that changed after the build: the
build records each source's SHA-256, and importing ``iot_guard`` refuses (ImportError,
one line naming the file) to run compiled modules that do not match their source.

    python iot_guard/native.py build | clean | status
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)

# The per-packet path: parse, validate, check, audit. One group (one shared library), so
# calls between them stay native. Compiled code enforces its annotations at run time, so
# a module joins only when its types hold for every caller and it measurably gains:
# proxy/link.py, audit/log.py, logs.py, proxy/stats.py and the policy's publish path were
# compiled in trials and gained nothing measurable, hot (bench.inproc) or cold (the load
# bench), so they stay source; the suite runs against the build (``make test``).
MODULES = (
    "iot_guard/mqtt/wire.py",
    "iot_guard/mqtt/properties.py",
    "iot_guard/mqtt/parser.py",
    "iot_guard/mqtt/encoder.py",
    "iot_guard/mqtt/topics.py",
    "iot_guard/payloads/fields.py",
    "iot_guard/payloads/jsondoc.py",
    "iot_guard/payloads/validators.py",
    "iot_guard/audit/records.py",
    "iot_guard/audit/merkle.py",
    "iot_guard/audit/chain.py",
    "iot_guard/session/feedback.py",
    "iot_guard/session/session.py",
    "iot_guard/checks/pipeline.py",
    "iot_guard/checks/rate_limit.py",
    "iot_guard/checks/anomaly.py",
)
# C of our own, built beside the group: the audit chain's SHA-256 calls on OpenSSL's
# libcrypto (audit/hashes.py says why; the source runs hashlib without it).
EXTENSIONS = ("iot_guard/audit/_chainhash.c",)
SOURCES = MODULES + EXTENSIONS
GROUP = "iot_guard._native"  # its shared library: iot_guard/_native__mypyc.*.so
STAMP = os.path.join(PACKAGE_DIR, "_native.sha256")  # "digest  path" per source

_SETUP = f"""
from setuptools import Extension, setup
from mypyc.build import mypycify
setup(name="iot-guard-native", ext_modules=mypycify(
    {list(MODULES)!r}, opt_level="3", group_name={GROUP!r}) + [
    Extension(path[:-2].replace("/", "."), [path], libraries=["crypto"],
              extra_compile_args=["-O2"]) for path in {list(EXTENSIONS)!r}])
"""


def _built() -> dict[str, str]:
    """Every module of the package with a compiled file beside its source (a build's,
    whatever its module list was): its path like the ones in ``SOURCES`` -> that file."""
    found = {}
    for folder, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            for suffix in EXTENSION_SUFFIXES:
                if name.endswith(suffix):
                    for kind in (".py", ".c"):
                        source = os.path.join(folder, name[: -len(suffix)] + kind)
                        if os.path.exists(source):
                            path = os.path.relpath(source, ROOT).replace(os.sep, "/")
                            found[path] = os.path.join(folder, name)
    return found


def _digest(path: str) -> str:
    with open(os.path.join(ROOT, path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _stamped() -> dict[str, str]:
    try:
        with open(STAMP, encoding="ascii") as f:
            return {path: digest for digest, path in (line.split() for line in f if line.strip())}
    except (OSError, ValueError):
        return {}


def stale() -> list[str]:
    """Sources whose compiled module was built from other text (empty: none, or no build)."""
    built = _built()
    if not built:
        return []
    stamped = _stamped()
    # All or nothing: the group's modules call each other natively, so one module
    # running from source beside the others compiled is not an option; nor is a module
    # compiled by a build with another list.
    extra = [path for path in built if path not in SOURCES]
    return extra + [path for path in SOURCES if stamped.get(path) != _digest(path)]


def check() -> None:
    """Called on ``import iot_guard``: fail closed on a build that is not the source's."""
    changed = stale()
    if changed:
        raise ImportError(
            f"iot_guard: {changed[0]} changed after the compiled modules were built"
            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}: run "
            "`make native` to rebuild them, or `make clean-native` to run the source"
        )


def clean() -> None:
    for compiled in _built().values():
        os.remove(compiled)
    for name in os.listdir(PACKAGE_DIR):
        if name.startswith("_native__mypyc.") or name == os.path.basename(STAMP):
            os.remove(os.path.join(PACKAGE_DIR, name))


def build() -> int:
    clean()  # never a half-old build: the stamp is written only after a full one
    done = subprocess.run(
        [sys.executable, "-c", _SETUP, "-q", "build_ext", "--inplace"], cwd=ROOT, check=False,
    )
    if done.returncode != 0:
        clean()
        return done.returncode
    with open(STAMP, "w", encoding="ascii") as f:
        f.writelines(f"{_digest(path)}  {path}\n" for path in SOURCES)
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "build":
        return build()
    if command == "clean":
        clean()
        return 0
    if command == "status" and not argv[1:]:
        built = sum(path in SOURCES for path in _built())
        changed = stale()
        print(f"{built} of {len(SOURCES)} modules compiled"
              + (f"; {len(changed)} changed since the build" if changed else ""))
        return 1 if changed else 0
    print("usage: python iot_guard/native.py build | clean | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
