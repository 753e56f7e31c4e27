"""What the publish checks work on: a ``PubMatch`` (one publish tool matching one
concrete topic, with everything but the payload decided: resource, device types, the
blast radius) and the payload check of each payload kind.

A PubMatch is kept per topic in the agent's cache, and the decisions it can give are
built on first use and then kept: a topic usually sees one or two of the dozen possible
outcomes. The order of the checks (QoS, retain, payload, blast radius, approval) is
``AgentPolicy.decide_publish``'s, the per-packet call, written out there in one loop.
"""

from __future__ import annotations

from ..mqtt.reason_codes import ReasonCode
from ..payloads import PayloadValidators
from ..policy_models import TYPED_PAYLOADS
from . import wording
from .decision import INVOKE, WRITE, Decision, Verdict, decision, deny
from .registry import COMMAND, Bindings, Registry, resource_of
from .trie import End

# Enum members as module constants: a global read is cheaper than a class attribute.
_ALLOW, _SUCCESS = Verdict.ALLOW, ReasonCode.SUCCESS


class PubMatch:
    __slots__ = (
        "end",
        "topic",
        "resource",
        "device_types",
        "command",
        "action_type",
        "bindings",
        "reach",
        "raised",
        "_allow",
        "_other",
    )

    def __init__(
        self, end: End, b: Bindings, topic: str, registry: Registry, resource: str | None = None
    ):
        self.end = end
        self.topic = topic
        self.bindings = b
        # ``resource``: resource_of(b) already made (topics decided in advance share it).
        self.resource = resource if resource is not None else resource_of(b)
        # Only what this tool's checks use is looked up (the first packet pays for it).
        self.device_types = registry.device_types(b) if end.payload in TYPED_PAYLOADS else ()
        self.command = b[COMMAND]
        self.action_type = INVOKE if end.payload == "command" else WRITE
        limit = end.approval_above_devices
        # Devices reached: 1 for a device topic, a group's size for a group topic.
        self.reach = registry.reach(b) if limit is not None else 0
        self.raised = limit is not None and self.reach > limit
        self._allow: dict[str, Decision] = {}  # by effective risk: the common outcome
        # Holds and refusals, made on first need (most topics never see one).
        self._other: dict[tuple[object, ...], Decision] | None = None

    def _made(self, key: tuple[object, ...]) -> Decision | None:
        other = self._other
        return None if other is None else other.get(key)

    def _keep(self, key: tuple[object, ...], made: Decision) -> Decision:
        if self._other is None:
            self._other = {}
        self._other[key] = made
        return made

    def allow(self, risk: str) -> Decision:
        d = self._allow.get(risk)
        if d is None:
            end = self.end
            d = self._allow[risk] = decision(
                _ALLOW, end.allowed_reason, _SUCCESS, self.action_type,
                end.tool, end.rule, self.resource, risk,
            )
        return d

    def hold(self, risk: str, raised_from: str | None) -> Decision:
        key = ("hold", risk, raised_from)
        d = self._made(key)
        if d is None:
            end = self.end
            # The decision names the rule that raised the risk when one did.
            rule = end.radius_rule if raised_from is not None else end.rule
            d = self._keep(key, decision(
                Verdict.HOLD,
                wording.held(risk, end, raised_from, self.reach),
                ReasonCode.NOT_AUTHORIZED,
                self.action_type,
                end.tool,
                rule,
                self.resource,
                risk,
            ))
        return d

    def qos_denied(self, qos: int) -> Decision:
        # MQTT QoS is 0-2 [MQTT-3.3.1-4]: out-of-range requests share the clamped entry.
        q = min(max(qos, 0), 2)
        key = ("qos", q)
        d = self._made(key)
        if d is None:
            end = self.end
            d = self._keep(key, deny(
                wording.qos_denied(end, q, self.topic), self.action_type,
                tool=end.tool, rule=end.rule, resource=self.resource,
            ))
        return d

    def retain_denied(self) -> Decision:
        key = ("retain",)
        d = self._made(key)
        if d is None:
            end = self.end
            d = self._keep(key, deny(
                wording.retain_denied(end, self.topic), self.action_type,
                tool=end.tool, rule=end.rule, resource=self.resource,
            ))
        return d

    def payload_denied(self, problem: str, field_rule: str | None = None) -> Decision:
        """``field_rule``: the device type field that refused the payload, when one did
        (its line says why); else the tool's rule."""
        end = self.end
        return deny(
            wording.payload_refused(end, problem), self.action_type,
            ReasonCode.PAYLOAD_FORMAT_INVALID, end.tool, field_rule or end.rule, self.resource,
        )


def check_payload(
    m: PubMatch, validators: PayloadValidators | None, payload: bytes
) -> tuple[str, str | None, str | None]:
    """(risk, None, None) if the payload is acceptable for the tool's payload kind on this
    topic (for the typed kinds: for every device type the topic reaches); else (risk,
    problem, rule of the device type field that refused it, or None)."""
    end = m.end
    if end.free is not None:
        # any / json / json_schema: the tool's own limits, whatever the topic layout.
        problem = end.free.check(payload)
        return "low", problem, None
    if validators is None:
        return "low", "the policy has no payload validators", None
    kind = end.payload
    if kind == "none":
        # A tool without a payload kind carries no data (e.g. shadow/get): anything
        # else would reach devices unvalidated (principle 2).
        v = validators.empty(payload)
        return v.risk, (None if v.ok else v.reason), None
    if not m.device_types:
        return "low", f"{m.resource} has no devices to validate the payload against", None
    # Every device type the topic reaches must accept it; parsed once for all of them.
    return validators.judge(kind, m.device_types, payload, command=m.command)
