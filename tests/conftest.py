"""Shared test setup.

The simulator's fixtures (``mosquitto``, ``fleet``, ``guard``, ``agent_client``) come from the
``simulator.pytest_plugin`` entry point that installing the package registers; when the tests
run from a source tree that was not installed, load the plugin here instead.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # `make test` runs the suite against the compiled core (`make native`): with this
    # option a run without it fails (tests/unit/test_native.py) instead of passing quietly.
    parser.addoption("--expect-native", action="store_true",
                     help="fail unless the per-packet core runs compiled (make native)")


def pytest_configure(config: pytest.Config) -> None:
    manager = config.pluginmanager
    if not manager.hasplugin("iot_guard_simulator") and not manager.hasplugin(
        "simulator.pytest_plugin"
    ):
        manager.import_plugin("simulator.pytest_plugin")
