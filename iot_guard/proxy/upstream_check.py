"""Can the guard log in to its broker? Checked at start, then every interval.

A guard whose own broker login fails still listens; its agents get CONNACK 0x88 (server
unavailable) and the broker's reason is only in the audit log. This addon logs in as the
guard on a connection of its own (CONNECT, CONNACK, DISCONNECT; client id
``iotguard-check:<id>``, which no agent's upstream id can take: those are
``iotguard:<agent>:<id>``), says clearly what failed, keeps checking, and says when it
recovers. It never touches an agent's session and nothing waits on it.

The judging is pure (:func:`check_connect`, :func:`judge_connack`); :func:`probe` only
moves the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..mqtt import Connack, Connect, Disconnect, ProtocolError, ReasonCode, StreamParser, encode
from ..mqtt.reason_codes import ConnackV3

if TYPE_CHECKING:
    from .server import GuardConfig, GuardServer

log = logging.getLogger("iot_guard.upstream")

MQTT_5, MQTT_311 = 5, 4


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    ok: bool
    detail: str  # what the broker said, for the log
    retry_v311: bool = False  # the broker does not speak MQTT 5: ask again in 3.1.1


def check_connect(config: GuardConfig, client_id: str, level: int) -> bytes:
    """The CONNECT the check sends: the guard's own account, a clean throwaway session."""
    password = config.upstream_password.encode() if config.upstream_password else None
    return encode(
        Connect(
            client_id=client_id, protocol_level=level, clean_start=True, keep_alive=30,
            username=config.upstream_username, password=password,
        ),
        level,
    )


def _code_name(code: int, level: int) -> str:
    if level == MQTT_311:
        try:
            return ConnackV3(code).name.lower().replace("_", " ")
        except ValueError:
            return "unknown return code"
    try:
        return ReasonCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown reason code"


def judge_connack(connack: Connack | None, level: int, account: str) -> UpstreamStatus:
    """What the broker's answer (None: it closed without one) means for the guard."""
    if connack is None:
        return UpstreamStatus(
            False, "the broker closed the connection without a CONNACK",
            retry_v311=level == MQTT_5,
        )
    code = connack.reason_code
    version = "MQTT 5" if level == MQTT_5 else "MQTT 3.1.1"
    if code == 0:
        return UpstreamStatus(True, f"the broker accepts {account} ({version})")
    if level == MQTT_5 and code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
        return UpstreamStatus(False, "the broker does not speak MQTT 5", retry_v311=True)
    hint = ""
    if code in (ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.NOT_AUTHORIZED) or (
        level == MQTT_311
        and code in (ConnackV3.BAD_USERNAME_OR_PASSWORD, ConnackV3.NOT_AUTHORIZED)
    ):
        hint = " (check upstream_username / upstream_password_file and the broker's accounts)"
    return UpstreamStatus(
        False, f"the broker refused {account}: {_code_name(code, level)} (0x{code:02X}){hint}"
    )


async def probe(
    config: GuardConfig, context: ssl.SSLContext | None, client_id: str, level: int = MQTT_5
) -> UpstreamStatus:
    """Log in once as the guard; never raises (a failure is a status)."""
    account = (
        f"the guard's account {config.upstream_username!r}" if config.upstream_username
        else "the guard (anonymous: no upstream_username)"
    )
    where = f"{config.upstream_host}:{config.upstream_port}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(config.connect_timeout):
            reader, writer = await asyncio.open_connection(
                config.upstream_host, config.upstream_port, ssl=context
            )
            writer.write(check_connect(config, client_id, level))
            parser = StreamParser(side="client", protocol_level=level)
            connack: Connack | None = None
            while connack is None:
                data = await reader.read(4096)
                if not data:
                    break
                connack = next((p for p in parser.feed(data) if isinstance(p, Connack)), None)
            status = judge_connack(connack, level, account)
            if status.ok:
                writer.write(encode(Disconnect(), level))
                await writer.drain()
    except TimeoutError:
        wait = config.connect_timeout
        status = UpstreamStatus(False, f"no answer from {where} within {wait:g} s")
    except ProtocolError as exc:
        status = UpstreamStatus(False, f"not an MQTT broker answer: {exc}", retry_v311=True)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        status = UpstreamStatus(False, f"cannot connect: {reason or type(exc).__name__}")
    finally:
        if writer is not None:
            writer.close()
    if status.retry_v311 and level == MQTT_5:
        older = await probe(config, context, client_id, MQTT_311)
        return older if older.ok or not older.retry_v311 else status
    return status


class UpstreamChecker:
    """Addon: check the guard's broker login at start and every ``interval_s``; log a
    failure at ERROR (once per outage) and the recovery at INFO."""

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self.status: UpstreamStatus | None = None
        self.checked = asyncio.Event()  # set after every check (tests await it)
        self._task: asyncio.Task[None] | None = None

    async def start(self, server: GuardServer) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(server))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, server: GuardServer) -> None:
        config = server.config
        client_id = f"iotguard-check:{secrets.token_hex(4)}"
        where = f"upstream {config.upstream_host}:{config.upstream_port}"
        while True:
            status = await probe(config, server.upstream_ssl, client_id)
            self._report(where, status, first=self.status is None)
            self.status = status
            self.checked.set()
            await asyncio.sleep(self.interval_s)  # the check's own period, not a wait

    def _report(self, where: str, status: UpstreamStatus, first: bool) -> None:
        was_ok = self.status.ok if self.status is not None else None
        if status.ok and first:
            log.info("%s: %s", where, status.detail)
        elif status.ok and was_ok is False:
            log.info("%s recovered: %s", where, status.detail)
        elif not status.ok and was_ok is not False:
            log.error(
                "%s: %s; agents are refused with 0x88 (server unavailable) until this is "
                "fixed; checking again every %g s", where, status.detail, self.interval_s,
            )
