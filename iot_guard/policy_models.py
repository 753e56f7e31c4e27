"""Pydantic models of the operator's YAML policy (the format's source of truth).

These models describe what an operator writes in ``device_policies/``. They are
validated once at load time; the per-packet path never builds them (see
``iot_guard/policy/compiler.py`` for the index used per packet).

A leaf module: it imports only the MQTT topic rules (``iot_guard.mqtt.topics``), so
both ``iot_guard.policy`` (the compiler) and ``iot_guard.payloads`` (the validators)
import it without a cycle. The risk classes are defined here, once.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .mqtt.topics import topic_filter_problem, topic_name_problem
from .tokens import DEFAULT_MAX_TTL_S

RiskClass = Literal["low", "medium", "high", "critical"]
# The risk classes from lowest to highest; a class's rank is its index.
RISKS: tuple[str, ...] = get_args(RiskClass)
RISK_ORDER: dict[str, int] = {name: rank for rank, name in enumerate(RISKS)}


def risk_max(a: str, b: str) -> str:
    """The higher of two risk classes."""
    return a if RISK_ORDER[a] >= RISK_ORDER[b] else b


def risk_above(risk: str) -> str:
    """The next class up (critical stays critical): a blast radius raises risk one class."""
    return RISKS[min(RISK_ORDER[risk] + 1, len(RISKS) - 1)]


Verb = Literal["publish", "subscribe"]
PayloadKind = Literal[
    "shadow_update", "config_patch", "command", "none", "any", "json", "json_schema"
]
# Kinds validated against the device type(s) a topic reaches (the topic names a device
# or group); the others fit any topic layout.
TYPED_PAYLOADS = ("shadow_update", "config_patch", "command")
FREE_PAYLOADS = ("any", "json", "json_schema")
# Their limits when a tool does not set its own (Tool.max_bytes, max_depth).
DEFAULT_ANY_MAX_BYTES = 256 * 1024
DEFAULT_JSON_MAX_BYTES = 64 * 1024
DEFAULT_JSON_MAX_DEPTH = 32
FieldType = Literal["number", "integer", "string", "boolean"]

# A registry name is used as exactly one topic level, so it may not contain the
# level separator or wildcards [MQTT-4.7.1-1], nor start with '$' [MQTT-4.7.2-1].
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

# Variables a topic template may use, each standing for exactly one topic level.
TEMPLATE_VARIABLES = ("tenant", "device", "group", "command")
_TEMPLATE_LEVEL = re.compile(r"^\{([a-z_]+)\}$")


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a policy must not silently widen it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FieldSpec(StrictModel):
    """One field of a device type's config, or of a command's payload."""

    type: FieldType = Field(description="JSON type of the value (integer excludes 1.5).")
    description: str | None = Field(default=None, description="What the field means.")
    # Finite: a NaN bound (YAML .nan) would refuse every value without a reason a
    # person can act on, and an infinite one cannot bound an integer.
    minimum: float | None = Field(
        default=None, allow_inf_nan=False,
        description="Smallest allowed value (number and integer fields).",
    )
    maximum: float | None = Field(
        default=None, allow_inf_nan=False,
        description="Largest allowed value (number and integer fields).",
    )
    enum: list[str] | list[int] | None = Field(
        default=None,
        description="The only allowed values. Quote words like 'off' and 'on', which YAML "
        "reads as booleans.",
    )
    max_length: int | None = Field(
        default=None, ge=0, description="Longest allowed string, in characters."
    )
    risk: RiskClass = Field(
        default="low",
        description="Risk class of changing this field; it raises a payload's effective risk.",
    )
    agent_writable: bool = Field(
        default=True, description="false: no agent may ever write this field."
    )
    required: bool = Field(
        default=False, description="Command payloads: the field must be present."
    )

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> FieldSpec:
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            "number",
            "integer",
        ):
            raise ValueError(f"minimum/maximum apply to number or integer fields, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is greater than maximum {self.maximum}")
        if self.enum is not None:
            if not self.enum:
                raise ValueError("enum must list at least one value")
            want = str if self.type == "string" else int
            if not all(type(v) is want for v in self.enum):
                # YAML 1.1 reads unquoted off/on/yes/no as booleans: quote them.
                raise ValueError(
                    f"enum values of a {self.type} field must all be {want.__name__}s"
                    " (quote words like 'off' and 'on', which YAML reads as booleans)"
                )
        return self


class CommandSpec(StrictModel):
    """A command a device type accepts on ``.../commands/{command}``."""

    description: str | None = Field(default=None, description="What the command does.")
    risk: RiskClass = Field(default="low", description="Risk class of sending the command.")
    payload: dict[Name, FieldSpec] = Field(
        default_factory=dict,
        description="The command's JSON payload: field name -> field spec ({} for none).",
    )


class DeviceType(StrictModel):
    """A kind of device: the config fields an agent may change and the commands it takes."""

    description: str | None = Field(default=None, description="What the device is.")
    config: dict[Name, FieldSpec] = Field(
        default_factory=dict, description="Config fields: name -> field spec."
    )
    commands: dict[Name, CommandSpec] = Field(
        default_factory=dict, description="Commands: name -> command spec."
    )


class Device(StrictModel):
    """One registered device of a tenant."""

    type: Name = Field(description="Name of its device type (a key of device_types).")
    description: str | None = Field(default=None, description="Where or what it is.")


class Tenant(StrictModel):
    """A customer: its devices and groups. {tenant} in a topic matches only tenant names."""

    description: str | None = Field(default=None, description="Who the tenant is.")
    devices: dict[Name, Device] = Field(
        default_factory=dict, description="Devices: name (one topic level) -> device."
    )
    # group name -> member device names (devices of this tenant)
    groups: dict[Name, list[Name]] = Field(
        default_factory=dict, description="Groups: name -> member devices of this tenant."
    )


class ToolConditions(StrictModel):
    """Conditions on a tool's use."""

    retain: bool = Field(default=False, description="May a publish set the retain flag?")
    max_qos: int = Field(
        default=1,
        ge=0,
        le=2,
        description="Highest QoS: a publish above it is refused; a subscription is granted "
        "at most this QoS.",
    )
    shared_subscription: bool = Field(
        default=False, description="May the agent subscribe through $share/{name}/...?"
    )
    # Hold for human approval when the effective risk is above this class.
    approval_above: RiskClass | None = Field(
        default=None,
        description="Hold for human approval when the effective risk (the tool's or the "
        "payload's, whichever is higher) is above this class.",
    )
    approval_above_devices: int | None = Field(
        default=None,
        ge=0,
        description="Blast radius: a publish reaching more devices than this (a device "
        "topic reaches 1, a group topic its group's size) has its effective risk raised "
        "one class, which approval_above then judges.",
    )
    # For payload kind "command": the commands this tool may send (default: none).
    commands: list[Name] | None = Field(
        default=None,
        description="The commands {command} may name (required for payload kind command; "
        "when absent, every command of the device's type).",
    )
    approval_chain: Name | None = Field(
        default=None,
        description="The approval chain (a key of approvals.chains) that decides this "
        "tool's held actions; when absent, the default chain for the action's risk.",
    )


FailureType = Literal["failed", "rejected", "timed_out"]
FAILURE_TYPES: tuple[FailureType, ...] = ("failed", "rejected", "timed_out")


class RolloutAbort(StrictModel):
    """When a rollout stops on its own (AWS IoT Jobs' abortConfig criteria)."""

    failure_pct: float = Field(
        gt=0,
        le=100,
        description="Abort when at least this percentage of the executed devices failed.",
    )
    min_executed: int = Field(
        ge=1,
        description="...but only once at least this many devices reached a final state.",
    )
    failure_types: list[FailureType] = Field(
        default_factory=lambda: list(FAILURE_TYPES),
        min_length=1,
        description="Which device outcomes count as failures (default: all three).",
    )


class Rollout(StrictModel):
    """Carry an approved group push out device by device instead of on the group topic."""

    device_topic: str = Field(
        description="Per-device topic template the guard publishes to, e.g. "
        "tenants/{tenant}/devices/{device}/config/patch.",
    )
    result_topic: str = Field(
        description="Per-device topic template where the device reports the outcome, e.g. "
        "tenants/{tenant}/devices/{device}/config/result.",
    )
    max_per_minute: float = Field(
        gt=0, le=60_000, description="At most this many devices started per minute (paced)."
    )
    canary: int = Field(
        default=0, ge=0, description="Devices done first; the rest wait for their outcome."
    )
    bake_s: float = Field(
        default=0, ge=0, description="Seconds to wait after the canaries succeeded."
    )
    device_timeout_s: float = Field(
        gt=0, description="A device without a result after this long has timed out."
    )
    abort: RolloutAbort | None = Field(
        default=None, description="Abort criteria; without them a rollout never aborts."
    )

    @model_validator(mode="after")
    def _templates_name_a_device(self) -> Rollout:
        for name, template in (
            ("device_topic", self.device_topic),
            ("result_topic", self.result_topic),
        ):
            for problem in template_problems(template, "publish"):
                raise ValueError(f"{name} {template!r}: {problem}")
            if "{device}" not in template.split("/"):
                raise ValueError(f"{name} {template!r}: needs {{device}}")
            if "{group}" in template.split("/") or "{command}" in template.split("/"):
                raise ValueError(f"{name} {template!r}: may use only {{tenant}} and {{device}}")
        return self


class Tool(StrictModel):
    """One allowed action: a verb on topic templates, with a payload kind and a risk class."""

    description: str | None = Field(default=None, description="What the tool is for.")
    verb: Verb = Field(description="publish or subscribe.")
    # One or more topic templates, e.g. "tenants/{tenant}/devices/{device}/telemetry".
    topics: list[str] = Field(
        min_length=1,
        description="Topic templates, e.g. tenants/{tenant}/devices/{device}/telemetry. A "
        "variable ({tenant}, {device}, {group}, {command}) is one whole level and matches "
        "only registry names. '+' and '#' only in subscribe tools. `topic: T` is short for "
        "`topics: [T]`.",
    )
    payload: PayloadKind = Field(
        default="none",
        description="How a publish payload is validated: shadow_update, config_patch, "
        "command (against the device type of the topic's device or group), none (the "
        "payload must be empty), any (opaque bytes up to max_bytes), json (one JSON "
        "object, strictly parsed, within max_bytes and max_depth) or json_schema (JSON "
        "accepted by the Draft 2020-12 schema in schema_file).",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Payload kinds any, json, json_schema: the largest payload in bytes "
        "(default 262144 for any, 65536 for json and json_schema).",
    )
    max_depth: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Payload kinds json, json_schema: the deepest nesting of objects and "
        "arrays (default 32).",
    )
    schema_file: str | None = Field(
        default=None,
        description="Payload kind json_schema: a JSON Schema (Draft 2020-12) file, relative "
        "to the policy directory; compiled once when the policy loads.",
    )
    risk: RiskClass = Field(default="low", description="The tool's own risk class.")
    conditions: ToolConditions = Field(
        default_factory=ToolConditions, description="Retain, QoS, $share, approval, commands."
    )
    rollout: Rollout | None = Field(
        default=None,
        description="A group publish tool: carry an approved action out device by device.",
    )

    @model_validator(mode="before")
    @classmethod
    def _topic_alias(cls, data: object) -> object:
        # Operators may write a single `topic:` instead of `topics: [...]`.
        if isinstance(data, dict) and "topic" in data:
            if "topics" in data:
                raise ValueError("give either topic or topics, not both")
            data = dict(data)
            data["topics"] = [data.pop("topic")]
        return data

    @model_validator(mode="after")
    def _templates_are_well_formed(self) -> Tool:
        for template in self.topics:
            for problem in template_problems(template, self.verb):
                raise ValueError(f"topic template {template!r}: {problem}")
        if self.verb == "subscribe" and self.payload != "none":
            raise ValueError("a subscribe tool has payload kind 'none'")
        if (self.payload == "json_schema") != (self.schema_file is not None):
            raise ValueError("schema_file goes with payload kind json_schema, and it needs one")
        if self.max_bytes is not None and self.payload not in FREE_PAYLOADS:
            raise ValueError("max_bytes applies to payload kinds any, json and json_schema")
        if self.max_depth is not None and self.payload not in ("json", "json_schema"):
            raise ValueError("max_depth applies to payload kinds json and json_schema")
        if self.payload == "command" and not self.conditions.commands:
            raise ValueError("a command tool must list conditions.commands")
        if self.rollout is not None and (
            self.verb != "publish" or not all("{group}" in t.split("/") for t in self.topics)
        ):
            raise ValueError("a rollout applies to a publish tool whose topics name {group}")
        return self


class Agent(StrictModel):
    """An identity that connects through the guard; everything not granted is denied."""

    description: str | None = Field(default=None, description="Who or what the agent is.")
    tenants: list[Name] = Field(
        min_length=1, description="The tenants whose names {tenant} may take for this agent."
    )
    tools: list[Name] = Field(
        default_factory=list,
        description="Allowlisted tools, in order: when several match a topic, the first wins.",
    )
    max_token_ttl_s: int = Field(
        default=DEFAULT_MAX_TTL_S,
        gt=0,
        description="Longest token lifetime (seconds) the guard accepts for this agent, at "
        "issue and at CONNECT (default 24 h).",
    )


APPROVAL_LEVELS = (1, 2, 3)


class Approver(StrictModel):
    """A human who may decide held actions (a token with role approver names this id)."""

    description: str | None = Field(default=None, description="Who the approver is.")
    levels: list[Annotated[int, Field(ge=1, le=3)]] = Field(
        min_length=1, description="The escalation levels (1-3) this approver may act at."
    )


class Admin(StrictModel):
    """An operator with the admin role (kill switch, cancelling requests)."""

    description: str | None = Field(default=None, description="Who the admin is.")


class ApprovalLevel(StrictModel):
    """One level of an approval chain: who decides there, and for how long."""

    approvers: list[Name] = Field(min_length=1, description="Approvers who decide at this level.")
    timeout_s: float = Field(
        gt=0, description="Seconds before the request escalates (or, at the last level, expires)."
    )


class ApprovalChain(StrictModel):
    """Up to three levels, e.g. on-call operator -> team lead -> security officer."""

    description: str | None = Field(default=None, description="What the chain is for.")
    levels: list[ApprovalLevel] = Field(
        min_length=1, max_length=3, description="Level 1 first; a timeout moves to the next."
    )


class Webhook(StrictModel):
    """A URL that receives a signed JSON POST on every approval transition."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^/\s]+(/\S*)?$")] = Field(
        description="http(s) URL; a Slack incoming-webhook URL works (the body has `text`)."
    )
    secret_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the signing secret (keeps "
        "the secret out of the policy files).",
    )
    secret: str | None = Field(
        default=None, min_length=16,
        description="The signing secret itself (prefer secret_env).",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per-attempt timeout.")

    @model_validator(mode="after")
    def _one_secret(self) -> Webhook:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret or secret_env")
        return self


class Approvals(StrictModel):
    """Who approves held actions, and how requests escalate and expire."""

    approvers: dict[Name, Approver] = Field(
        default_factory=dict, description="Approvers by id, with the levels they may act at."
    )
    admins: dict[Name, Admin] = Field(default_factory=dict, description="Admins by id.")
    chains: dict[Name, ApprovalChain] = Field(
        default_factory=dict, description="Approval chains by name; a tool names its chain."
    )
    webhooks: list[Webhook] = Field(
        default_factory=list,
        description="Signed JSON POSTs on every transition (HMAC-SHA256, see the README).",
    )


# ----------------------------------------------------------------------------- limits (issue 8 §2)


class Rate(StrictModel):
    """A rate with a burst (GCRA): on average ``per_minute`` actions a minute, at most
    ``burst`` at once. ``{per_minute: 20, burst: 20}``: 20 in a row, then one every 3 s."""

    per_minute: float = Field(gt=0, le=1e9, description="Actions per minute, on average.")
    burst: int = Field(
        default=1, ge=1, le=1_000_000_000,
        description="How many may come at once (the bucket's size; default 1: evenly spaced).",
    )


class ActionLimit(StrictModel):
    """Limits on one tool's (or one risk class's) actions; every one given applies."""

    per_agent: Rate | None = Field(
        default=None, description="Across all sessions of one agent (refused with 0x97)."
    )
    per_session: Rate | None = Field(
        default=None, description="Within one session (refused with 0x97)."
    )
    per_session_total: int | None = Field(
        default=None, ge=1,
        description="At most this many in one session, ever (a quota; refused with 0x97).",
    )

    @model_validator(mode="after")
    def _says_something(self) -> ActionLimit:
        if self.per_agent is None and self.per_session is None and self.per_session_total is None:
            raise ValueError("give per_agent, per_session or per_session_total")
        return self


class Limits(StrictModel):
    """Rate limits and quotas (the ``limits`` section); nothing here: no limit."""

    connections: Rate | None = Field(
        default=None,
        description="CONNECTs per agent (a reconnect storm gets CONNACK 0x9F).",
    )
    subscriptions: Rate | None = Field(
        default=None,
        description="Subscription filters per session (a SUBSCRIBE flood gets SUBACK 0x97).",
    )
    tools: dict[Name, ActionLimit] = Field(
        default_factory=dict, description="Limits per tool name (publish and subscribe tools)."
    )
    risks: dict[RiskClass, ActionLimit] = Field(
        default_factory=dict,
        description="Limits per effective risk class, across every tool of that class.",
    )


# ----------------------------------------------------------------------------- anomaly (§3)

AnomalyMode = Literal["alert", "block", "off"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)
_WORK_WEEK: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")
_CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class AnomalyRule(StrictModel):
    """One anomaly rule: ``alert`` (audit, log, ``$guard/events``, alert hooks), ``block``
    (also the kill switch for the agent), or ``off``."""

    mode: AnomalyMode = Field(default="alert", description="alert, block or off.")
    count: int = Field(default=10, ge=2, le=100_000, description="How many make an anomaly.")
    window_s: float = Field(
        default=60, gt=0, le=86_400, description="...within this many seconds."
    )


class RateSpike(StrictModel):
    """An agent's rate of one tool far above its own baseline (an EWMA mean and variance
    of the count per window, kept in the state store)."""

    mode: AnomalyMode = Field(default="alert", description="alert, block or off.")
    k: float = Field(default=3.0, gt=0, le=100, description="Standard deviations above the mean.")
    window_s: float = Field(
        default=60, ge=1, le=86_400, description="The window actions are counted in."
    )
    alpha: float = Field(
        default=0.1, gt=0, le=1, description="EWMA weight of the newest window (0 < a <= 1)."
    )
    warmup_windows: int = Field(
        default=10, ge=1, le=100_000,
        description="Windows a baseline must cover before it can alert.",
    )
    min_count: int = Field(
        default=5, ge=1,
        description="Never alert below this many actions in a window (a quiet baseline's "
        "standard deviation is near zero).",
    )


class WorkingHours(StrictModel):
    """When agents are expected to act; outside it the ``off_hours`` rule fires."""

    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/Berlin.")
    days: list[Weekday] = Field(
        default_factory=lambda: list(_WORK_WEEK), min_length=1,
        description="Working days.",
    )
    start: Annotated[str, StringConstraints(pattern=_CLOCK_TIME)] = Field(
        default="08:00", description="HH:MM local time (inclusive)."
    )
    end: Annotated[str, StringConstraints(pattern=_CLOCK_TIME)] = Field(
        default="18:00", description="HH:MM local time (exclusive); before start: overnight."
    )

    @model_validator(mode="after")
    def _zone_exists(self) -> WorkingHours:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.start == self.end:
            raise ValueError("start and end are the same time")
        return self


def _off() -> AnomalyRule:
    return AnomalyRule(mode="off")


class Anomaly(StrictModel):
    """Anomaly rules (the ``anomaly`` section). Every rule is off until named here; start
    each in ``alert`` and measure its false positives before ``block`` (README)."""

    repeated_denials: AnomalyRule = Field(
        default_factory=_off, description="``count`` refusals of one agent within ``window_s``."
    )
    outside_tenants: AnomalyRule = Field(
        default_factory=_off,
        description="An action naming a registered tenant that is not the agent's "
        "(``count``/``window_s`` unused: every attempt counts).",
    )
    repeated_action: AnomalyRule = Field(
        default_factory=_off,
        description="The same action (tool and topic) ``count`` times in a row in a session.",
    )
    first_use: AnomalyRule = Field(
        default_factory=_off, description="An agent uses a tool for the first time ever."
    )
    off_hours: AnomalyRule = Field(
        default_factory=_off, description="Any action outside ``working_hours``."
    )
    rate_spike: RateSpike = Field(
        default_factory=lambda: RateSpike(mode="off"),
        description="An agent+tool rate more than k standard deviations above its baseline.",
    )
    working_hours: WorkingHours | None = Field(
        default=None, description="Needed by off_hours."
    )
    cooldown_s: float = Field(
        default=60, ge=0, le=86_400,
        description="One alert per agent, rule and subject within this many seconds "
        "(more are counted, not sent).",
    )
    webhooks: bool = Field(
        default=False,
        description="Also POST alerts (anomalies and limits hit) to approvals.webhooks, "
        "signed, as alert.<rule> events.",
    )

    @model_validator(mode="after")
    def _hours_for_off_hours(self) -> Anomaly:
        if self.off_hours.mode != "off" and self.working_hours is None:
            raise ValueError("off_hours needs working_hours")
        return self


class PolicyDocument(StrictModel):
    """The whole policy: the union of every YAML file in the policy directory."""

    device_types: dict[Name, DeviceType] = Field(
        default_factory=dict, description="Device types by name."
    )
    tenants: dict[Name, Tenant] = Field(
        default_factory=dict, description="The fleet registry: tenants by name."
    )
    tools: dict[Name, Tool] = Field(default_factory=dict, description="Tools by name.")
    agents: dict[Name, Agent] = Field(default_factory=dict, description="Agents by id.")
    approvals: Approvals = Field(
        default_factory=Approvals, description="Approvers, admins and approval chains."
    )
    limits: Limits = Field(
        default_factory=Limits, description="Rate limits and quotas per tool and risk class."
    )
    anomaly: Anomaly = Field(default_factory=Anomaly, description="Anomaly rules and modes.")

    def reference_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Cross references that pydantic cannot see, as (path, message) pairs."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for tenant_name, tenant in self.tenants.items():
            for device_name, device in tenant.devices.items():
                if device.type not in self.device_types:
                    problems.append(
                        (
                            ("tenants", tenant_name, "devices", device_name, "type"),
                            f"unknown device type {device.type!r}",
                        )
                    )
            for group_name, members in tenant.groups.items():
                for i, member in enumerate(members):
                    if member not in tenant.devices:
                        problems.append(
                            (
                                ("tenants", tenant_name, "groups", group_name, i),
                                f"{member!r} is not a device of tenant {tenant_name!r}",
                            )
                        )
        for tool_name, tool in self.tools.items():
            for i, command in enumerate(tool.conditions.commands or []):
                if not any(command in t.commands for t in self.device_types.values()):
                    problems.append(
                        (
                            ("tools", tool_name, "conditions", "commands", i),
                            f"no device type has a command {command!r}",
                        )
                    )
        problems.extend(self._approval_problems())
        for tool_name in self.limits.tools:
            if tool_name not in self.tools:
                problems.append((("limits", "tools", tool_name), f"unknown tool {tool_name!r}"))
        for agent_name, agent in self.agents.items():
            for i, tenant_name in enumerate(agent.tenants):
                if tenant_name not in self.tenants:
                    problems.append(
                        (("agents", agent_name, "tenants", i), f"unknown tenant {tenant_name!r}")
                    )
            for i, tool_name in enumerate(agent.tools):
                if tool_name not in self.tools:
                    problems.append(
                        (("agents", agent_name, "tools", i), f"unknown tool {tool_name!r}")
                    )
        return problems


    def _approval_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Approvers, chains and tools that name each other consistently."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        section = self.approvals
        for who in (*section.approvers, *section.admins):
            if who in self.agents:
                # An agent identity can never approve (or administer) its own actions.
                where = "approvers" if who in section.approvers else "admins"
                problems.append(
                    (
                        ("approvals", where, who),
                        f"{who!r} is also an agent; an agent never approves",
                    )
                )
        for chain_name, chain in section.chains.items():
            for level_no, level in enumerate(chain.levels, start=1):
                for i, who in enumerate(level.approvers):
                    path: tuple[str | int, ...] = ("approvals", "chains", chain_name)
                    path += ("levels", level_no - 1, "approvers", i)
                    approver = section.approvers.get(who)
                    if approver is None:
                        problems.append((path, f"unknown approver {who!r}"))
                    elif level_no not in approver.levels:
                        problems.append(
                            (path, f"approver {who!r} may not act at level {level_no} "
                                   f"(levels {approver.levels})")
                        )
        for tool_name, tool in self.tools.items():
            chain_ref = tool.conditions.approval_chain
            if chain_ref is not None and chain_ref not in section.chains:
                problems.append(
                    (("tools", tool_name, "conditions", "approval_chain"),
                     f"unknown approval chain {chain_ref!r}")
                )
        return problems


def template_problems(template: str, verb: str) -> list[str]:
    """What is wrong with a topic template (empty list: nothing).

    The MQTT rules are iot_guard.mqtt.topics' (a template is checked as the Topic Name or
    Topic Filter it stands for, a ``{variable}`` being one plain level); what is added
    here is the template's own grammar.
    """
    if template.startswith("$"):
        return ["'$' topics are reserved to the broker and the guard [MQTT-4.7.2-1]"]
    if verb == "subscribe":
        mqtt_problem = topic_filter_problem(template)
    else:
        mqtt_problem = topic_name_problem(template)
        if mqtt_problem is not None and ("+" in template or "#" in template):
            mqtt_problem += "; '+' and '#' are only allowed in subscribe templates"
    if mqtt_problem is not None:
        return [mqtt_problem]
    problems: list[str] = []
    seen: set[str] = set()
    for level in template.split("/"):
        match = _TEMPLATE_LEVEL.match(level)
        if match:
            name = match.group(1)
            if name not in TEMPLATE_VARIABLES:
                problems.append(f"unknown variable {{{name}}}; use one of {TEMPLATE_VARIABLES}")
            elif name in seen:
                problems.append(f"variable {{{name}}} appears twice")
            seen.add(name)
        elif "{" in level or "}" in level:
            problems.append(f"level {level!r}: a variable must be a whole level")
    if "device" in seen and "tenant" not in seen:
        problems.append("{device} needs {tenant} earlier in the topic")
    if "group" in seen and "tenant" not in seen:
        problems.append("{group} needs {tenant} earlier in the topic")
    if "command" in seen and "device" not in seen:
        problems.append("{command} needs {device} earlier in the topic")
    return problems
