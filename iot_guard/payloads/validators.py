"""Payload validators built once per policy from its device types.

The per-packet path is: strict JSON parse (``jsondoc.parse_object``), a few dict
lookups for the envelope, and one call into a prebuilt pydantic validator
(``fields.FieldSet``). Nothing is built per packet, and no method raises on bad input:
every outcome is a ``PayloadVerdict``.

Shadow documents follow AWS IoT device shadow semantics (see DESIGN.md):
``{"state": {"desired": {...}}, "version": N, "clientToken": "..."}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from iot_guard.policy_models import RISK_ORDER, RISKS, PolicyDocument

from .fields import FieldSet, key_text
from .jsondoc import MAX_CLIENT_TOKEN_BYTES, kind_name, parse_object, show

# Shadow versions are 64-bit longs in AWS IoT; a larger number may not survive a device.
MAX_VERSION = 2**63 - 1
_SHADOW_KEYS = ("state", "version", "clientToken")
CLIENT_TOKEN = "clientToken"


@dataclass(frozen=True, slots=True)
class PayloadVerdict:
    ok: bool
    # "" when ok; otherwise names the field and the rule, e.g.
    # "state.desired.target_temp_c: 45 is above the maximum 30"
    reason: str
    # Highest RiskClass among the fields / command touched ("low" when none).
    risk: str = "low"
    # Config fields the payload touches, sorted (null removals included).
    fields: tuple[str, ...] = ()
    # The parsed JSON object when ok, so callers don't parse twice.
    document: object = None
    # When a field refused the payload: its rule ("file:line (device_types.T.config.F)").
    rule: str | None = None


_EMPTY_OK = PayloadVerdict(ok=True, reason="")

_new = object.__new__
_set_ok, _set_reason, _set_risk, _set_fields, _set_document, _set_rule = (
    getattr(PayloadVerdict, name).__set__ for name in PayloadVerdict.__slots__
)


def _accepted(risk: str, fields: tuple[str, ...], document: object) -> PayloadVerdict:
    """``PayloadVerdict(ok=True, ...)`` per accepted payload, at half the cost: the slot
    descriptors set the slots the frozen dataclass's ``__init__`` sets through
    ``object.__setattr__`` (as policy.decision.decision does)."""
    v = _new(PayloadVerdict)
    _set_ok(v, True)
    _set_reason(v, "")
    _set_risk(v, risk)
    _set_fields(v, fields)
    _set_document(v, document)
    _set_rule(v, None)
    return v
_NO_TYPE = PayloadVerdict(ok=False, reason="no device type to validate the payload against")


def _refused(reason: str, rule: str | None = None) -> PayloadVerdict:
    return PayloadVerdict(ok=False, reason=reason, rule=rule)


def _client_token_problem(doc: dict[str, object]) -> str:
    token = doc[CLIENT_TOKEN]
    if type(token) is not str:
        return f"clientToken: {kind_name(token)}, not a string"
    # Lone surrogates were refused by the parser; surrogatepass only keeps this total.
    size = len(token.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_TOKEN_BYTES:
        return f"clientToken: {size} bytes; the limit is {MAX_CLIENT_TOKEN_BYTES} bytes"
    return ""


class _DeviceTypeValidators:
    __slots__ = ("name", "config", "commands", "command_risk")

    def __init__(
        self,
        name: str,
        config: FieldSet,
        commands: dict[str, FieldSet],
        command_risk: dict[str, int],
    ) -> None:
        self.name = name
        self.config = config
        self.commands = commands
        self.command_risk = command_risk


class PayloadValidators:
    """Validators for every payload kind of every device type of one policy.

    ``agent=True`` (the guard): config fields with ``agent_writable: false`` are refused
    and a shadow update may only write ``state.desired``. ``agent=False`` (a device's own
    view, used by the simulator's devices): every config field is writable and a shadow
    update may also carry ``state.reported``, as the AWS shadow service accepts from a device.
    """

    __slots__ = ("agent", "_types")

    def __init__(self, types: dict[str, _DeviceTypeValidators], agent: bool) -> None:
        self.agent = agent
        self._types = types

    @classmethod
    def build(
        cls,
        doc: PolicyDocument,
        *,
        agent: bool = True,
        rule_of: Callable[[tuple[str, ...]], str] | None = None,
    ) -> PayloadValidators:
        """``rule_of`` (the loaded policy's ``PolicySource.rule``) names each field's line,
        so a refusal points at the field that refused, not only at the tool."""

        def rules(path: tuple[str, ...], names: Iterable[str]) -> dict[str, str]:
            return {name: rule_of(path + (name,)) for name in names} if rule_of else {}

        types: dict[str, _DeviceTypeValidators] = {}
        for type_name, device_type in doc.device_types.items():
            if CLIENT_TOKEN in device_type.config:
                # A config patch's clientToken is metadata; a field of that name could not
                # be patched, so refuse the policy rather than silently shadow the field.
                raise ValueError(
                    f"device type {type_name!r}: a config field may not be named {CLIENT_TOKEN!r}"
                )
            config = FieldSet(
                f"device type {type_name}",
                "config field",
                device_type.config,
                agent=agent,
                nullable=True,
                honour_required=False,  # a patch or desired update names only what changes
                rules=rules(("device_types", type_name, "config"), device_type.config),
            )
            commands = {
                command_name: FieldSet(
                    f"command {command_name}",
                    "payload field",
                    command.payload,
                    agent=agent,
                    nullable=False,
                    honour_required=True,
                    rules=rules(
                        ("device_types", type_name, "commands", command_name, "payload"),
                        command.payload,
                    ),
                )
                for command_name, command in device_type.commands.items()
            }
            command_risk = {
                command_name: RISK_ORDER[command.risk]
                for command_name, command in device_type.commands.items()
            }
            types[type_name] = _DeviceTypeValidators(type_name, config, commands, command_risk)
        return cls(types, agent)

    # -- shadow/update ----------------------------------------------------------------

    def shadow_update(self, device_type: str, payload: bytes) -> PayloadVerdict:
        return self.for_types("shadow_update", (device_type,), payload)

    def _shadow_update(
        self, validators: _DeviceTypeValidators, doc: dict[str, object]
    ) -> PayloadVerdict:
        for key in doc:
            if key not in _SHADOW_KEYS:
                return _refused(
                    f"{key_text(key)}: unknown key; a shadow update has only"
                    " state, version and clientToken"
                )
        if "version" in doc:
            version = doc["version"]
            # type() is int: a JSON true must not pass as version 1.
            if type(version) is not int or not 0 <= version <= MAX_VERSION:
                return _refused(
                    f"version: {show(version)} is not an integer from 0 to {MAX_VERSION}"
                )
        if CLIENT_TOKEN in doc:
            problem = _client_token_problem(doc)
            if problem:
                return _refused(problem)
        if "state" not in doc:
            return _refused("state: required in a shadow update")
        state = doc["state"]
        if type(state) is not dict:
            return _refused(f"state: {kind_name(state)}, not an object")
        sections = ("desired",) if self.agent else ("desired", "reported")
        for key in state:
            if key not in sections:
                if key == "reported":
                    return _refused("state.reported: an agent may not write reported state")
                return _refused(
                    f"state.{key_text(key)}: unknown key; "
                    + (
                        "an agent may only write state.desired"
                        if self.agent
                        else "state has only desired and reported"
                    )
                )
        if not state:
            return _refused("state: changes nothing (no desired state)")
        rank = 0
        touched: set[str] = set()
        for section in sections:
            values = state.get(section)
            if values is None and section not in state:
                continue
            # AWS reads "desired": null as "delete all desired state"; an agent wiping
            # every desired key at once is refused: it should name the keys it removes.
            if type(values) is not dict:
                return _refused(f"state.{section}: {kind_name(values)}, not an object")
            # AWS accepts an empty desired object as a no-op; we refuse it so that a
            # confused agent learns that its update did nothing (and no approval is
            # spent on, or audit line written for, a change that is not one).
            if not values:
                return _refused(f"state.{section}: changes nothing (empty object)")
            problem, section_rank, rule = validators.config.check(values, f"state.{section}.")
            if problem:
                return _refused(problem, rule)
            if section_rank > rank:
                rank = section_rank
            touched.update(values)
        return _accepted(RISKS[rank], tuple(sorted(touched)), doc)

    # -- config/patch and group config/push -------------------------------------------

    def config_patch(self, device_type: str, payload: bytes) -> PayloadVerdict:
        return self.for_types("config_patch", (device_type,), payload)

    def _config_patch(
        self, validators: _DeviceTypeValidators, doc: dict[str, object]
    ) -> PayloadVerdict:
        patch = doc
        if CLIENT_TOKEN in doc:
            # Metadata, not a field: the device echoes it on config/result.
            problem = _client_token_problem(doc)
            if problem:
                return _refused(problem)
            patch = {key: value for key, value in doc.items() if key != CLIENT_TOKEN}
        if not patch:
            return _refused("payload: changes nothing (empty merge patch)")
        problem, rank, rule = validators.config.check(patch, "")
        if problem:
            return _refused(problem, rule)
        return _accepted(RISKS[rank], tuple(sorted(patch)), doc)

    # -- commands/{command} ------------------------------------------------------------

    def command(self, device_type: str, command: str, payload: bytes) -> PayloadVerdict:
        validators = self._types.get(device_type)
        if validators is None:
            return _refused(f"unknown device type {show(device_type)}")
        fields = validators.commands.get(command)
        if fields is None:
            return _refused(
                f"command {key_text(command)}: not a command of device type {validators.name}"
            )
        if payload:
            doc, problem = parse_object(payload)
            if doc is None:
                return _refused(problem)
        else:
            # An empty payload is an empty object, so `identify` takes b"" as well as b"{}".
            doc = {}
        problem, rank, rule = fields.check(doc, f"{command}.")
        if problem:
            return _refused(problem, rule)
        rank = max(rank, validators.command_risk[command])
        return PayloadVerdict(ok=True, reason="", risk=RISKS[rank], document=doc)

    # -- payload kind "none" (e.g. shadow/get) -------------------------------------------

    def empty(self, payload: bytes) -> PayloadVerdict:
        if payload:
            return _refused(f"payload: must be empty, got {len(payload)} bytes")
        return _EMPTY_OK

    def for_kind(
        self, kind: str, device_type: str, payload: bytes, command: str | None = None
    ) -> PayloadVerdict:
        """Dispatch on a tool's PayloadKind."""
        return self.for_types(kind, (device_type,), payload, command)

    def for_types(
        self,
        kind: str,
        device_types: tuple[str, ...],
        payload: bytes,
        command: str | None = None,
    ) -> PayloadVerdict:
        """Dispatch on a tool's PayloadKind for a topic that reaches ``device_types`` (a
        group's members may be of several types).

        Every type must accept the payload; the riskiest verdict wins. The payload is
        parsed once however many types there are.
        """
        verdicts: Iterable[PayloadVerdict]
        if kind == "none":
            return self.empty(payload)
        if kind == "command":
            if command is None:
                return _refused("payload kind 'command' needs a command name")
            # A command topic names one device (compile_problems), so this parses once.
            verdicts = (self.command(t, command, payload) for t in device_types)
        elif kind == "shadow_update" or kind == "config_patch":
            check = self._shadow_update if kind == "shadow_update" else self._config_patch
            if len(device_types) == 1:
                # One device (the usual topic): its verdict is the answer.
                return self._check_one(check, device_types[0], payload)
            verdicts = self._check_each(check, device_types, payload)
        else:
            return _refused(f"unknown payload kind {show(kind)}")
        best = _NO_TYPE
        for verdict in verdicts:
            if not verdict.ok:
                return verdict
            if not best.ok or RISK_ORDER[verdict.risk] > RISK_ORDER[best.risk]:
                best = verdict
        return best

    def _check_one(
        self,
        check: Callable[[_DeviceTypeValidators, dict[str, object]], PayloadVerdict],
        device_type: str,
        payload: bytes,
    ) -> PayloadVerdict:
        validators = self._types.get(device_type)
        if validators is None:
            return _refused(f"unknown device type {show(device_type)}")
        doc, problem = parse_object(payload)
        if doc is None:
            return _refused(problem)
        return check(validators, doc)

    def _check_each(
        self,
        check: Callable[[_DeviceTypeValidators, dict[str, object]], PayloadVerdict],
        device_types: tuple[str, ...],
        payload: bytes,
    ) -> Iterator[PayloadVerdict]:
        """``check`` per device type, parsing the payload once, before the first check."""
        doc: dict[str, object] | None = None
        for device_type in device_types:
            validators = self._types.get(device_type)
            if validators is None:
                yield _refused(f"unknown device type {show(device_type)}")
                return
            if doc is None:
                doc, problem = parse_object(payload)
                if doc is None:
                    yield _refused(problem)
                    return
            yield check(validators, doc)
