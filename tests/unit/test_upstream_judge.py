"""The upstream login check's judging of the broker's CONNACK (pure; no network)."""

from __future__ import annotations

import pytest

from iot_guard.mqtt import Connack
from iot_guard.proxy.upstream_check import MQTT_5, MQTT_311, judge_connack

ACCOUNT = "the guard's account 'iot-guard'"
HINT = "check upstream_username / upstream_password_file and the broker's accounts"


def test_accepted_in_each_version() -> None:
    v5 = judge_connack(Connack(reason_code=0), MQTT_5, ACCOUNT)
    v3 = judge_connack(Connack(reason_code=0), MQTT_311, ACCOUNT)
    assert v5.ok and v5.detail == f"the broker accepts {ACCOUNT} (MQTT 5)"
    assert v3.ok and v3.detail == f"the broker accepts {ACCOUNT} (MQTT 3.1.1)"


def test_no_connack_or_no_mqtt_5_asks_again_in_311() -> None:
    closed = judge_connack(None, MQTT_5, ACCOUNT)
    assert not closed.ok and closed.retry_v311
    assert not judge_connack(None, MQTT_311, ACCOUNT).retry_v311
    old = judge_connack(Connack(reason_code=0x84), MQTT_5, ACCOUNT)
    assert not old.ok and old.retry_v311 and old.detail == "the broker does not speak MQTT 5"


@pytest.mark.parametrize(("code", "level", "name"), [
    (0x86, MQTT_5, "bad user name or password"),
    (0x87, MQTT_5, "not authorized"),
    (4, MQTT_311, "bad username or password"),
    (5, MQTT_311, "not authorized"),
])
def test_refused_credentials_point_at_the_account_settings(code: int, level: int,
                                                           name: str) -> None:
    status = judge_connack(Connack(reason_code=code), level, ACCOUNT)
    assert not status.ok and not status.retry_v311
    assert status.detail == f"the broker refused {ACCOUNT}: {name} (0x{code:02X}) ({HINT})"


@pytest.mark.parametrize(("code", "level", "name"), [
    (3, MQTT_311, "server unavailable"),
    (0x88, MQTT_5, "server unavailable"),
    (0x42, MQTT_311, "unknown return code"),
])
def test_other_refusals_have_no_account_hint(code: int, level: int, name: str) -> None:
    status = judge_connack(Connack(reason_code=code), level, ACCOUNT)
    assert not status.ok
    assert status.detail == f"the broker refused {ACCOUNT}: {name} (0x{code:02X})"
