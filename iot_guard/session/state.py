"""The session's states and every transition between them, as one table.

Modelled on h11's ``_state.py``: the session never assigns its state directly; it
names what happened and this table says where that leads. A pair missing from the
table is a bug in the session, not an input problem, so it raises.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    AWAITING_CONNECT = "awaiting_connect"  # TCP open, no CONNECT yet
    CONNECTING = "connecting"  # CONNECT accepted, upstream CONNECT sent, no CONNACK yet
    CONNECTED = "connected"
    CLOSED = "closed"


class Trigger(Enum):
    CONNECT_ACCEPTED = "connect accepted"
    CONNACK_ACCEPTED = "connack accepted"
    CLOSE = "close"


TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.AWAITING_CONNECT, Trigger.CONNECT_ACCEPTED): State.CONNECTING,
    (State.CONNECTING, Trigger.CONNACK_ACCEPTED): State.CONNECTED,
    (State.AWAITING_CONNECT, Trigger.CLOSE): State.CLOSED,
    (State.CONNECTING, Trigger.CLOSE): State.CLOSED,
    (State.CONNECTED, Trigger.CLOSE): State.CLOSED,
    (State.CLOSED, Trigger.CLOSE): State.CLOSED,
}


class SessionStateError(RuntimeError):
    """A transition the table does not have: the session's own logic is wrong."""


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise SessionStateError(f"no transition from {state.value} on {trigger.value}") from None
