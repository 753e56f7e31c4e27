"""iot-guard: an MQTT-layer guard for AI ops agents."""

__version__ = "0.1.0"
