"""``iot-guard simulate``: run a fleet against a broker until Ctrl-C, with a live summary.

    iot-guard simulate --policy device_policies --broker 127.0.0.1:1883 \\
        [--scale 1000] [--mode mux] [--fault offline@acme/therm-002] [--fault latency_s=0.5] \\
        [--username U --password-file F]

Before starting, the simulator logs in once with the devices' credentials: a broker that
refuses them (or nothing listening) ends the command at once with the broker's reason and
exit status 1, and so does a fleet of which no device comes online within --start-timeout.

A fault is ``NAME[=VALUE][@TARGET]``: NAME one of the device faults (offline, latency_s,
drop_rate, reject_config, crash_on_apply, flapping_s, malformed_telemetry), VALUE defaulting
to "on" for switches, TARGET ``*`` (default), ``TENANT/*`` or ``TENANT/DEVICE``.
With ``--username`` every device uses that one broker account (a broker locked down per
device needs per-device accounts, which the pytest plugin and the demo set up).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class FaultSpec:
    name: str
    value: Any
    target: str

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        # Imported here: `iot-guard --help` registers this command without loading the fleet.
        from .device import Faults

        body, _, target = text.partition("@")
        name, has_value, raw = body.partition("=")
        defaults = Faults.defaults()
        if name not in defaults:
            raise UsageError(f"unknown fault {name!r}; choose from {', '.join(defaults)}")
        kind = type(defaults[name])
        if not has_value:
            if kind is not bool:
                raise UsageError(f"fault {name} needs a value, e.g. {name}=0.5")
            value: Any = True
        elif kind is bool:
            if raw.lower() not in ("on", "off", "true", "false", "1", "0"):
                raise UsageError(f"fault {name} is on or off, not {raw!r}")
            value = raw.lower() in ("on", "true", "1")
        else:
            try:
                value = kind(raw)
            except ValueError:
                raise UsageError(f"fault {name}: {raw!r} is not a number") from None
        return cls(name, value, target or "*")


def parse_hostport(text: str) -> tuple[str, int]:
    """The broker's address: HOST:PORT as the guard's flags read it, the port 1-65535 (0
    means "any free port" to a listener, nothing to a client)."""
    from iot_guard.settings import parse_host_port

    try:
        host, port = parse_host_port(text)
    except ValueError as exc:
        raise UsageError(f"--broker: {exc}") from None
    if port == 0:
        raise UsageError(f"--broker: port 0 is not a broker's port, in {text!r}")
    return host, port


def probe_broker(
    host: str, port: int, credentials: tuple[str, str] | None, timeout: float = 5.0
) -> str | None:
    """Log in once as a device would: None when the broker accepts, else why not."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answers: list[Any] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"iot-guard-simulate-probe-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if credentials:
        client.username_pw_set(*credentials)
    client.on_connect = lambda _c, _u, _f, rc, _p: answers.append(rc)
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        return f"cannot connect to the broker at {host}:{port}: {exc.strerror or exc}"
    deadline = time.monotonic() + timeout
    try:
        while not answers and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break  # the broker closed the connection without a CONNACK
    finally:
        if answers and not answers[0].is_failure:
            client.disconnect()  # paho writes it now and closes the socket
        else:
            sock = client.socket()
            if sock is not None:
                sock.close()  # refused or silent: nothing more to say to this peer
    if not answers:
        return (
            f"{host}:{port} did not answer the MQTT CONNECT within {timeout:g} s "
            "(is it an MQTT broker, and on this port?)"
        )
    reason = answers[0]
    if reason.is_failure:
        who = f"account {credentials[0]!r}" if credentials else "an anonymous client"
        return (
            f"the broker at {host}:{port} refused {who}: {reason} (reason code "
            f"0x{reason.value:02X}); check --username / --password-file and the broker's "
            "accounts"
        )
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=Path("device_policies"), metavar="DIR")
    parser.add_argument("--broker", required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--scale", type=int, default=0, metavar="N", help="total devices (adds generated ones)"
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="NAME[=VALUE][@TARGET]"
    )
    parser.add_argument("--username", help="one broker account for every device")
    parser.add_argument("--password-file", type=Path, metavar="F")
    parser.add_argument(
        "--mode",
        choices=("per-device", "mux"),
        default="per-device",
        help="one connection per device (default) or many devices per connection",
    )
    parser.add_argument("--mux-size", type=int, default=100, metavar="N")
    parser.add_argument("--telemetry-interval", type=float, default=None, metavar="S")
    parser.add_argument("--summary-every", type=float, default=1.0, metavar="S")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="fail when no device is online S seconds after the start (default 15)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run the example fleet of virtual devices against a broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .fleet import Fleet

    try:
        host, port = parse_hostport(args.broker)
        faults = [FaultSpec.parse(f) for f in args.fault]
        credentials = None
        if args.username:
            if not args.password_file:
                raise UsageError("--username needs --password-file")
            from iot_guard.tokens import read_credential_file

            password = read_credential_file(args.password_file)
            credentials = (args.username, password)
    except (UsageError, ValueError) as err:
        print(f"iot-guard simulate: {err}", file=sys.stderr)
        return 2
    refused = probe_broker(host, port, credentials)
    if refused is not None:
        print(f"iot-guard simulate: {refused}", file=sys.stderr)
        return 1
    fleet = Fleet(
        args.policy,
        host,
        port,
        credentials=(lambda spec: credentials),
        mux_credentials=credentials,
        scale=args.scale,
        mode=args.mode,
        mux_size=args.mux_size,
        telemetry_interval_s=args.telemetry_interval,
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    out = sys.stdout
    try:
        print(
            f"simulating {len(fleet.devices)} devices ({args.mode}) on {host}:{port}; "
            "Ctrl-C to stop",
            file=out,
            flush=True,
        )
        fleet.start(wait=False)
        for spec in faults:
            touched = fleet.set_fault(spec.name, spec.value, spec.target)
            print(
                f"fault {spec.name}={spec.value} on {touched} device(s) ({spec.target})", file=out
            )
        started = time.monotonic()
        last = (started, 0, 0)
        failed = False
        while not stop.wait(args.summary_every):
            now = time.monotonic()
            stats = fleet.stats()
            dt = max(now - last[0], 1e-6)
            out_rate = (stats.sent - last[1]) / dt
            in_rate = (stats.received - last[2]) / dt
            last = (now, stats.sent, stats.received)
            faults_text = ", ".join(f"{k}={v}" for k, v in sorted(stats.faults.items())) or "none"
            print(
                f"[{now - started:7.1f}s] online {stats.online}/{stats.total}  "
                f"out {out_rate:7.1f} msg/s  in {in_rate:6.1f} msg/s  "
                f"telemetry {stats.telemetry}  faults: {faults_text}",
                file=out,
                flush=True,
            )
            if args.duration is not None and now - started >= args.duration:
                break
            if stats.online == 0 and now - started >= args.start_timeout:
                print(
                    f"iot-guard simulate: no device came online within {args.start_timeout:g} s "
                    f"on {host}:{port}; see the broker's log for why it refuses them",
                    file=sys.stderr,
                )
                failed = True
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fleet.stop()
    stats = fleet.stats()
    print(
        f"stopped: {stats.total} devices, {stats.sent} messages sent "
        f"({stats.telemetry} telemetry), {stats.received} requests handled",
        file=out,
        flush=True,
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
