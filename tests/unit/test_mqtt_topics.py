"""Topic Name / Topic Filter validation and matching (spec 4.7, 4.8.2)."""

from __future__ import annotations

import pytest

from iot_guard.mqtt import (
    ProtocolError,
    ReasonCode,
    split_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)


@pytest.mark.parametrize(
    "topic", ["a", "/", "a/b/c", "/leading", "trailing/", "a//b", "$SYS/x", "ünï/✓", " "]
)
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize("topic", ["", "+", "#", "a/+/b", "a/#", "a+", "a#b", "a\x00b"])
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_name(topic)
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID


def test_topic_name_length_limit_is_in_utf8_bytes() -> None:
    validate_topic_name("a" * 65535)
    with pytest.raises(ProtocolError):
        validate_topic_name("a" * 65536)
    # 21846 three-byte characters = 65538 bytes, although only 21846 code points.
    with pytest.raises(ProtocolError):
        validate_topic_name("€" * 21846)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "a/#",
        "+/+",
        "a/+/c",
        "/+",
        "+/",
        "a//#",
        "$SYS/#",
        "$share/g/a/#",
        "$share/g/+",
        "$share/g/#",
        "$share",
        "$shared/x",
        "sport/tennis/+/#",
    ],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "",
        "a/#/b",  # '#' not last [MQTT-4.7.1-2]
        "#/a",
        "a#",  # '#' not a whole level
        "sport/tennis#",
        "a+",  # '+' not a whole level [MQTT-4.7.1-3]
        "a/+b/c",
        "++",
        "$share/",  # no ShareName, no filter
        "$share//a",  # empty ShareName [MQTT-4.8.2-1]
        "$share/g",  # no filter [MQTT-4.8.2-2]
        "$share/g/",  # empty filter
        "$share/+/a",  # wildcard in ShareName
        "$share/g#/a",
        "$share/g/a/#/b",  # bad inner filter
        "a\x00",
    ],
)
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason_code == ReasonCode.TOPIC_FILTER_INVALID


def test_split_shared() -> None:
    assert split_shared("$share/grp/a/b/#") == ("grp", "a/b/#")
    assert split_shared("a/b") == (None, "a/b")
    assert split_shared("$shared/a") == (None, "$shared/a")
    assert split_shared("$share/g") == ("g", "")


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("a/+", "a", False),
        ("+/+", "/b", True),
        ("+", "/b", False),
        ("a/#", "a", True),  # '#' includes the parent level [MQTT-4.7.1-2]
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "/", True),
        ("sport/+/player1", "sport/tennis/player1", True),
        ("sport/+/player1", "sport/tennis/player2", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),  # [MQTT-4.7.2-1]
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/+", "$SYS/x", True),
        ("$share/g/a/+", "a/b", True),  # shared prefix ignored for matching
        ("$share/g/#", "$SYS/x", False),
        ("A/b", "a/b", False),  # case-sensitive
        ("a/b/", "a/b", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
