"""A broker read of one packet (an ack, a delivery: most reads at low load) has a short
way in GuardSession._on_broker_data; it must answer exactly as the loop does when the
same packet comes with another one behind it."""

from __future__ import annotations

from typing import Any

import pytest

from iot_guard.mqtt import (
    Disconnect,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    encode,
)
from iot_guard.session import BrokerData, GuardSession, SendToAgent, WriteAudit

from .test_session import NOW, TELEMETRY, connected, token

FOREIGN = "tenants/globex/devices/therm-101/telemetry"
PINGRESP = encode(PingResp(), 5)


def _answer(session: GuardSession, data: bytes) -> list[Any]:
    return [(type(c).__name__, dict(c.record) if isinstance(c, WriteAudit) else c)
            for c in session.handle(BrokerData(data), NOW)]


def _without_the_ping(commands: list[Any]) -> list[Any]:
    """The loop's answer to ``packet + PINGRESP`` less the PINGRESP's relay (the last
    bytes sent to the agent). After a DISCONNECT the PINGRESP is not relayed at all: the
    session ended with it [MQTT-3.14.4-1]."""
    if commands and commands[-1][0] == "Close":
        assert not any(name == "SendToAgent" and c.data.endswith(PINGRESP)
                       for name, c in commands), commands
        return commands
    last = max(i for i, (name, _) in enumerate(commands) if name == "SendToAgent")
    data = commands[last][1].data
    assert data.endswith(PINGRESP)
    rest = data[:-len(PINGRESP)]
    commands = list(commands)
    if rest:
        commands[last] = ("SendToAgent", SendToAgent(rest))
    else:
        del commands[last]
    return commands


def _dropped_qos2(session: GuardSession) -> None:
    # A refused QoS 2 delivery: its PUBREL is the guard's to complete, not relayed.
    session.handle(BrokerData(encode(Publish(FOREIGN, b"1", qos=2, packet_id=12), 5)), NOW)


CASES: dict[str, tuple[bytes, Any]] = {
    "puback": (encode(PubAck(7), 5), None),
    "pubrec": (encode(PubRec(7), 5), None),
    "pubcomp": (encode(PubComp(7), 5), None),
    "pingresp": (PINGRESP, None),
    "pubrel relayed": (encode(PubRel(12), 5), None),
    "pubrel of a dropped delivery": (encode(PubRel(12), 5), _dropped_qos2),
    "qos 0 delivery": (encode(Publish(TELEMETRY, b'{"t":21}'), 5), None),
    "qos 1 delivery": (encode(Publish(TELEMETRY, b'{"t":21}', qos=1, packet_id=3), 5), None),
    "refused qos 1 delivery": (encode(Publish(FOREIGN, b"{}", qos=1, packet_id=11), 5), None),
    "refused qos 2 delivery": (encode(Publish(FOREIGN, b"{}", qos=2, packet_id=13), 5), None),
    "broker disconnect": (encode(Disconnect(0x8B), 5), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_packet_read_answers_as_the_loop_does(case: str) -> None:
    data, setup = CASES[case]
    password = token()  # one token: the records name its id
    alone, with_more = connected(password=password), connected(password=password)
    if setup is not None:
        setup(alone)
        setup(with_more)
    got = _answer(alone, data)
    assert got, case  # every case answers something
    assert got == _without_the_ping(_answer(with_more, data + PINGRESP)), case
    assert alone.state is with_more.state
    assert alone._dropped_broker_qos2 == with_more._dropped_broker_qos2
