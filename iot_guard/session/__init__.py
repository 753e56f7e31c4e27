"""The sans-IO guard session: one agent connection's state machine."""

from .actions import Action, Close, ExpireAt, OpenUpstream, SendToAgent, SendToBroker, WriteAudit
from .feedback import EVENTS_TOPIC
from .session import GuardSession, SessionSettings, State

__all__ = [
    "Action", "Close", "ExpireAt", "OpenUpstream", "SendToAgent", "SendToBroker", "WriteAudit",
    "EVENTS_TOPIC", "GuardSession", "SessionSettings", "State",
]
