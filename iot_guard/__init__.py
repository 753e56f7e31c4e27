"""iot-guard: an MQTT-layer guard for AI ops agents."""

from .native import check as _check_native

__version__ = "0.1.0"

# The per-packet core may be compiled (``make native``): never a build of other sources.
_check_native()
