"""Topic Name and Topic Filter rules (spec 4.7) and shared subscriptions (spec 4.8.2).

The one place these rules live: the codec raises with them (``validate_*``), the policy
asks the same questions without raising (``*_problem``), and the policy's topic
templates are checked with them too. One set of reason codes follows, wherever the
question is asked: a malformed Topic Name is 0x90 (Topic Name invalid), a malformed
Topic Filter (its ``$share/`` form included) is 0x8F (Topic Filter invalid), and a
well-formed one is then judged by the policy (0x87 not authorized, 0x9E shared
subscriptions not supported).
"""

from __future__ import annotations

from .errors import ProtocolError
from .reason_codes import ReasonCode

SHARE_PREFIX = "$share/"
_MAX_TOPIC_BYTES = 0xFFFF


def _too_long(text: str) -> bool:
    # A str of <= 16383 code points encodes to at most 65532 bytes: skip encoding then.
    return len(text) > 16383 and len(text.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid Topic Name, or None (the codec and the policy ask this)."""
    if not topic:
        # All Topic Names MUST be at least one character long [MQTT-4.7.3-1].
        return "topic name is empty [MQTT-4.7.3-1]"
    if "+" in topic or "#" in topic:
        return f"wildcard in topic name {topic!r} [MQTT-3.3.2-2]"
    if "\x00" in topic:
        return "U+0000 in topic name [MQTT-4.7.3-2]"
    if len(topic) > 16383 and _too_long(topic):  # the length test first: no call per name
        return "topic name longer than 65535 bytes"
    return None


def validate_topic_name(topic: str) -> None:
    """Raise ProtocolError(0x90) unless ``topic`` is a valid Topic Name."""
    problem = topic_name_problem(topic)
    if problem is not None:
        raise ProtocolError(ReasonCode.TOPIC_NAME_INVALID, problem)


def _filter_text(topic_filter: str, why: str) -> str:
    return f"topic filter {topic_filter!r}: {why}"


def _levels_problem(topic_filter: str, whole: str) -> str | None:
    if "+" not in topic_filter and "#" not in topic_filter:
        return None
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            # '#' MUST stand alone and be the last level [MQTT-4.7.1-2].
            return _filter_text(whole, "'#' must be a whole level and the last one [MQTT-4.7.1-2]")
        if "+" in level and level != "+":
            return _filter_text(whole, "'+' must occupy an entire level [MQTT-4.7.1-3]")
    return None


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``'$share/g/a/b'`` -> ``('g', 'a/b')``; a non-shared filter -> ``(None, filter)``.

    Assumes nothing about validity; ``validate_topic_filter`` checks the parts.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    share_name, _, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return share_name, inner


def topic_filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid Topic Filter (``$share/`` form included), or None."""
    if not topic_filter:
        return _filter_text(topic_filter, "empty [MQTT-4.7.3-1]")
    if "\x00" in topic_filter:
        return _filter_text(topic_filter, "contains U+0000 [MQTT-4.7.3-2]")
    if _too_long(topic_filter):
        return _filter_text(topic_filter[:40], "longer than 65535 bytes")
    share_name, inner = split_shared(topic_filter)
    if share_name is not None:
        rest = topic_filter[len(SHARE_PREFIX) :]
        if "/" not in rest:
            return _filter_text(topic_filter, "shared subscription without a filter [MQTT-4.8.2-2]")
        if not share_name or "+" in share_name or "#" in share_name:
            # ShareName is non-empty and MUST NOT contain '/', '+' or '#' [MQTT-4.8.2-2].
            return _filter_text(topic_filter, "invalid ShareName [MQTT-4.8.2-1]")
        if not inner:
            return _filter_text(topic_filter, "shared subscription without a filter [MQTT-4.8.2-2]")
    return _levels_problem(inner, topic_filter)


def validate_topic_filter(topic_filter: str) -> None:
    """Raise ProtocolError(0x8F) unless ``topic_filter`` is a valid Topic Filter."""
    problem = topic_filter_problem(topic_filter)
    if problem is not None:
        raise ProtocolError(ReasonCode.TOPIC_FILTER_INVALID, problem)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when the Topic Name ``topic`` matches ``topic_filter`` (spec 4.7).

    A ``$share/{name}/`` prefix is ignored (the inner filter is matched). Filters starting
    with a wildcard do not match topics starting with '$' [MQTT-4.7.2-1]; ``a/#`` matches
    ``a`` (the parent level) [MQTT-4.7.1-2].
    """
    if topic_filter.startswith(SHARE_PREFIX):
        topic_filter = split_shared(topic_filter)[1]
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    count = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= count:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == count
