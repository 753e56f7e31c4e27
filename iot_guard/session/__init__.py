"""The sans-IO guard session: one agent connection's state machine (events in, commands out)."""

from .commands import (
    CancelTimer,
    Close,
    Command,
    GuardSubscribed,
    HeldAction,
    OpenUpstream,
    SendToAgent,
    SendToBroker,
    SetTimer,
    StartHold,
    WriteAudit,
)
from .events import (
    AgentClosed,
    AgentData,
    AgentOpened,
    BrokerClosed,
    BrokerData,
    BrokerUnreachable,
    Event,
    GuardNotice,
    HoldResolved,
    Kick,
    PolicySwapped,
    TimerFired,
)
from .feedback import EVENTS_TOPIC
from .session import GuardSession, SessionSettings
from .state import State

__all__ = [
    "CancelTimer", "Close", "Command", "GuardSubscribed", "HeldAction", "OpenUpstream",
    "SendToAgent", "SendToBroker", "SetTimer", "StartHold", "WriteAudit",
    "AgentClosed", "AgentData", "AgentOpened", "BrokerClosed", "BrokerData", "BrokerUnreachable",
    "Event", "GuardNotice", "HoldResolved", "Kick", "PolicySwapped", "TimerFired",
    "EVENTS_TOPIC", "GuardSession", "SessionSettings", "State",
]
