"""The admin HTTP server (``app``: approvals API, console, kill switch, metrics, health)
and its command-line clients (``cli``, ``brakes_cli``).

Nothing is imported here: the CLI's commands load their client modules without the
server's aiohttp stack, which costs every ``iot-guard`` invocation about 0.2 s."""
