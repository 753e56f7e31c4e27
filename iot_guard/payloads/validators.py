"""Payload validators built once per policy from its device types.

The per-packet path is: a JSON read, a few dict lookups for the envelope, and the
prebuilt field checks (``fields.FieldSet``). Nothing is built per packet, and no method
raises on bad input: every outcome is a ``PayloadVerdict``.

Two passes, one answer. The usual payload is valid, so each kind's check first runs
"sure" on orjson's reading of the payload (``jsondoc.loads_unproven``): there it accepts
only what it is sure of (``FieldSet.sure_rank``), and counts the members of the dicts it
walked, which ``jsondoc.members_match`` compares with the text (no duplicate key). An
accepted document is then the strict parser's, value for value: every dict in it was
counted, and every other value is a checked scalar (no float read from a too-big
integer). Anything else, a refusal included, is decided again from scratch on the
check with its reasons, on orjson's reading when ``jsondoc.proven`` shows it is the strict
parser's value (a well-formed payload with a bad value: most refusals), else on the
strict parse (``jsondoc.strict_parse_object``), which gives a malformed payload its reason.

Shadow documents follow AWS IoT device shadow semantics (see DESIGN.md):
``{"state": {"desired": {...}}, "version": N, "clientToken": "..."}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from iot_guard.policy_models import RISK_ORDER, RISKS, PolicyDocument

from .fields import FieldSet, key_text
from .jsondoc import (
    MAX_CLIENT_TOKEN_BYTES,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    kind_name,
    members_match,
    parse_object,
    proven,
    show,
    strict_parse_object,
)

# Shadow versions are 64-bit longs in AWS IoT; a larger number may not survive a device.
MAX_VERSION = 2**63 - 1
# orjson's reader, unproven (jsondoc.loads_unproven, written out in _check_doc).
_loads = orjson.loads
_SHADOW_KEYS = ("state", "version", "clientToken")
_SHADOW_KEY_SET = frozenset(_SHADOW_KEYS)
_ABSENT = object()
CLIENT_TOKEN = "clientToken"
# An accepted shadow update nests 3 levels (the document, state, state.desired), so the
# sure pass needs no depth walk.
assert MAX_DEPTH >= 3

# A check's acceptance: (risk rank, the members of every dict in the document added up,
# the dicts whose keys are the fields it touches). A refusal is a PayloadVerdict.
_Accept = tuple[int, int, tuple[dict[str, object], ...]]
# A command's check target: its payload fields, its risk rank, its reasons' prefix.
_CommandTarget = tuple[FieldSet, int, str]
# A check: (its target, the document, sure?) -> refusal or acceptance.
_Check = Callable[[Any, dict[str, object], bool], "PayloadVerdict | _Accept"]


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
    document: Any = None
    # When a field refused the payload: its rule ("file:line (device_types.T.config.F)").
    rule: str | None = None


_EMPTY_OK = PayloadVerdict(ok=True, reason="")
_NO_TYPE = PayloadVerdict(ok=False, reason="no device type to validate the payload against")
# The sure pass's "not sure": decided again on the strict parse (never an answer).
_UNSURE = PayloadVerdict(ok=False, reason="not sure")
# ``judge``'s answer for an accepted payload, by risk rank.
_JUDGED_OK: tuple[tuple[str, None, None], ...] = tuple((risk, None, None) for risk in RISKS)


def _verdict(doc: dict[str, object], accept: _Accept) -> PayloadVerdict:
    rank, _, touched = accept
    if len(touched) == 1:
        fields = tuple(sorted(touched[0]))
    else:
        fields = tuple(sorted(set().union(*touched)))
    return PayloadVerdict(True, "", RISKS[rank], fields, doc)


def _refused(reason: str, rule: str | None = None) -> PayloadVerdict:
    return PayloadVerdict(ok=False, reason=reason, rule=rule)


def _client_token_problem(doc: dict[str, object]) -> str:
    token = doc[CLIENT_TOKEN]
    if type(token) is not str:
        return f"clientToken: {kind_name(token)}, not a string"
    if len(token) <= MAX_CLIENT_TOKEN_BYTES and token.isascii():
        return ""  # one byte per character
    # Lone surrogates were refused by the parser; surrogatepass only keeps this total.
    size = len(token.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_TOKEN_BYTES:
        return f"clientToken: {size} bytes; the limit is {MAX_CLIENT_TOKEN_BYTES} bytes"
    return ""


class _DeviceTypeValidators:
    __slots__ = ("name", "config", "command_targets")

    def __init__(
        self, name: str, config: FieldSet, command_targets: dict[str, _CommandTarget]
    ) -> None:
        self.name = name
        self.config = config
        # Per command: its payload fields, its risk rank, its reasons' prefix.
        self.command_targets = command_targets


class PayloadValidators:
    """Validators for every payload kind of every device type of one policy.

    ``agent=True`` (the guard): config fields with ``agent_writable: false`` are refused
    and a shadow update may only write ``state.desired``. ``agent=False`` (a device's own
    view, used by the simulator's devices): every config field is writable and a shadow
    update may also carry ``state.reported``, as the AWS shadow service accepts from a device.
    """

    __slots__ = ("agent", "_types", "_sections", "_section_set")

    def __init__(self, types: dict[str, _DeviceTypeValidators], agent: bool) -> None:
        self.agent = agent
        self._types = types
        # The sections of state a shadow update may write.
        self._sections = ("desired",) if agent else ("desired", "reported")
        self._section_set = frozenset(self._sections)

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
            command_targets: dict[str, _CommandTarget] = {
                command_name: (
                    FieldSet(
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
                    ),
                    RISK_ORDER[command.risk],
                    f"{command_name}.",
                )
                for command_name, command in device_type.commands.items()
            }
            types[type_name] = _DeviceTypeValidators(type_name, config, command_targets)
        return cls(types, agent)

    # -- shadow/update ----------------------------------------------------------------

    def shadow_update(self, device_type: str, payload: bytes) -> PayloadVerdict:
        return self.for_types("shadow_update", (device_type,), payload)

    def _shadow_update(
        self, validators: _DeviceTypeValidators, doc: dict[str, object], sure: bool
    ) -> PayloadVerdict | _Accept:
        """``sure``: the sure pass (see the module's docstring): a field value it is not
        sure of gives ``_UNSURE``."""
        if not _SHADOW_KEY_SET.issuperset(doc):  # (one C call; the loop names the key)
            for key in doc:
                if key not in _SHADOW_KEY_SET:
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
        token = doc.get(CLIENT_TOKEN, _ABSENT)
        if token is not _ABSENT and not (
            type(token) is str and len(token) <= MAX_CLIENT_TOKEN_BYTES and token.isascii()
        ):  # (a short ASCII token, the usual one, is valid without a call)
            problem = _client_token_problem(doc)
            if problem:
                return _refused(problem)
        state = doc.get("state", _ABSENT)
        if state is _ABSENT:
            return _refused("state: required in a shadow update")
        if type(state) is not dict:
            return _refused(f"state: {kind_name(state)}, not an object")
        sections = self._sections
        if not self._section_set.issuperset(state):
            for key in state:
                if key in sections:
                    continue
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
        members = len(doc) + len(state)
        touched: tuple[dict[str, object], ...] = ()
        for section in sections:
            values = state.get(section, _ABSENT)
            if values is _ABSENT:
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
            if sure:
                section_rank = validators.config.sure_rank(values)
                if section_rank < 0:
                    return _UNSURE
            else:
                problem, section_rank, rule = validators.config.check(
                    values, f"state.{section}."
                )
                if problem:
                    return _refused(problem, rule)
            if section_rank > rank:
                rank = section_rank
            members += len(values)
            touched += (values,)
        return rank, members, touched

    # -- config/patch and group config/push -------------------------------------------

    def config_patch(self, device_type: str, payload: bytes) -> PayloadVerdict:
        return self.for_types("config_patch", (device_type,), payload)

    def _config_patch(
        self, validators: _DeviceTypeValidators, doc: dict[str, object], sure: bool
    ) -> PayloadVerdict | _Accept:
        patch = doc
        if CLIENT_TOKEN in doc:
            # Metadata, not a field: the device echoes it on config/result.
            problem = _client_token_problem(doc)
            if problem:
                return _refused(problem)
            patch = {key: value for key, value in doc.items() if key != CLIENT_TOKEN}
        if not patch:
            return _refused("payload: changes nothing (empty merge patch)")
        if sure:
            rank = validators.config.sure_rank(patch)
            if rank < 0:
                return _UNSURE
        else:
            problem, rank, rule = validators.config.check(patch, "")
            if problem:
                return _refused(problem, rule)
        return rank, len(doc), (patch,)

    # -- commands/{command} ------------------------------------------------------------

    def command(self, device_type: str, command: str, payload: bytes) -> PayloadVerdict:
        validators = self._types.get(device_type)
        if validators is None:
            return _refused(f"unknown device type {show(device_type)}")
        target = validators.command_targets.get(command)
        if target is None:
            return _refused(
                f"command {key_text(command)}: not a command of device type {validators.name}"
            )
        judged = self._command_doc(target, payload)
        if isinstance(judged, tuple):
            return _verdict(*judged)
        return judged

    def _command_doc(
        self, target: _CommandTarget, payload: bytes
    ) -> tuple[dict[str, object], _Accept] | PayloadVerdict:
        if payload:
            return self._check_doc(self._command, target, payload)
        # An empty payload is an empty object, so `identify` takes b"" as well as b"{}".
        doc: dict[str, object] = {}
        result = self._command(target, doc, False)
        return (doc, result) if isinstance(result, tuple) else result

    @staticmethod
    def _command(
        target: _CommandTarget, doc: dict[str, object], sure: bool
    ) -> PayloadVerdict | _Accept:
        fields, command_rank, prefix = target
        if sure:
            rank = fields.sure_rank(doc)
            if rank < 0:
                return _UNSURE
        else:
            problem, rank, rule = fields.check(doc, prefix)
            if problem:
                return _refused(problem, rule)
        # A command's payload is flat: its only dict is the document.
        return max(rank, command_rank), len(doc), ()

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

    def judge(
        self,
        kind: str,
        device_types: tuple[str, ...],
        payload: bytes,
        command: str | None = None,
    ) -> tuple[str, str | None, str | None]:
        """``for_types``'s answer as (risk, reason or None, field rule or None): the
        guard's per-packet call. An accepted shadow update or config patch for one device
        type (the usual topic) costs no verdict object and no sorted field list."""
        validators = self._types.get(device_types[0]) if len(device_types) == 1 else None
        if validators is not None:
            judged: tuple[dict[str, object], _Accept] | PayloadVerdict | None = None
            if kind == "shadow_update":
                judged = self._check_doc(self._shadow_update, validators, payload)
            elif kind == "config_patch":
                judged = self._check_doc(self._config_patch, validators, payload)
            elif kind == "command" and command is not None:
                target = validators.command_targets.get(command)
                if target is not None:
                    judged = self._command_doc(target, payload)
            if isinstance(judged, tuple):
                return _JUDGED_OK[judged[1][0]]
            if judged is not None:
                return judged.risk, judged.reason, judged.rule
        v = self.for_types(kind, device_types, payload, command)
        return v.risk, (None if v.ok else v.reason), v.rule

    def _check_doc(
        self, check: _Check, target: Any, payload: bytes
    ) -> tuple[dict[str, object], _Accept] | PayloadVerdict:
        """(document, acceptance), or the refusal: the sure pass on orjson's reading,
        then on any doubt the strict parse (see the module's docstring)."""
        # (loads_unproven written out: a call less per payload)
        try:
            doc = _loads(payload) if len(payload) <= MAX_DOCUMENT_BYTES else None
        except ValueError:  # orjson.JSONDecodeError
            doc = None
        if type(doc) is dict:
            sure = check(target, doc, True)
            # (the colon count first, inline: the usual payload has no colon in a string)
            if isinstance(sure, tuple) and (
                payload.count(b":") == sure[1] or members_match(payload, sure[1])
            ):
                return doc, sure
        strict: dict[str, object] | None
        if type(doc) is dict and proven(payload, doc, MAX_DEPTH):
            strict = doc  # the strict parser's value: no second parse to find the reason
        else:
            strict, problem = strict_parse_object(payload)
            if strict is None:
                return _refused(problem)
        result = check(target, strict, False)
        if isinstance(result, tuple):
            return strict, result
        return result

    def _check_one(self, check: _Check, device_type: str, payload: bytes) -> PayloadVerdict:
        validators = self._types.get(device_type)
        if validators is None:
            return _refused(f"unknown device type {show(device_type)}")
        judged = self._check_doc(check, validators, payload)
        if isinstance(judged, tuple):
            return _verdict(*judged)
        return judged

    def _check_each(
        self, check: _Check, device_types: tuple[str, ...], payload: bytes
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
            result = check(validators, doc, False)
            yield _verdict(doc, result) if isinstance(result, tuple) else result
