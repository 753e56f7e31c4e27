"""A flat JSON object of declared fields, compiled once into a strict pydantic validator.

A device type's config and a command's payload are both flat objects whose keys are
declared by ``FieldSpec``s. ``FieldSet`` checks the keys itself (so that a refusal can
say *why* a key is refused: unknown, or not writable by an agent) and hands the values
to a pydantic ``TypeAdapter`` built once per field set. Pydantic runs in strict mode: no
"21" for a number, no ``true`` for a number, no 4.5 for an integer. Pydantic's own
messages are not shown: on a refusal ``field_problem`` re-derives the reason from the
spec, so every reason has the same shape ("<path>: <value> <rule>").

Per packet, pydantic is asked only when in doubt: each field also has a plain predicate
(``sure_value``) that is true only for values pydantic surely accepts (the usual case: a
number within its bounds, a word of its enum). False means "ask pydantic", never
"refused", so the answer is pydantic's whatever the predicate says. A refusal is
cheap too: where ``field_problem`` surely answers as pydantic would (``alike``: the usual
refused values, a number out of its bounds, a word out of its enum, a wrong type),
its reason is the answer and pydantic is not asked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError

# pydantic needs typing_extensions.TypedDict before Python 3.12.
from typing_extensions import TypedDict

from iot_guard.policy_models import NAME_PATTERN, RISK_ORDER, FieldSpec

from .jsondoc import kind_name, show

_NAME = re.compile(NAME_PATTERN)


def key_text(key: str) -> str:
    """A key for a reason string: as is when it is a plain name, else quoted ASCII JSON."""
    return key if _NAME.match(key) else show(key)


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def field_problem(spec: FieldSpec, value: object, *, nullable: bool) -> str | None:
    """What is wrong with ``value`` for ``spec`` (None: nothing). Mirrors ``value_type``."""
    if value is None:
        return None if nullable else "null is not allowed"
    want = spec.type
    vtype = type(value)
    if want == "number":
        if vtype is not int and vtype is not float:
            return f"{show(value)} is {kind_name(value)}, not a number"
        try:
            float(value)  # type: ignore[arg-type]
        except OverflowError:
            return f"{show(value)} is too large for a number"
    elif want == "integer":
        if vtype is float:
            return f"{show(value)} is not an integer"
        if vtype is not int:
            return f"{show(value)} is {kind_name(value)}, not an integer"
    elif want == "string":
        if vtype is not str:
            return f"{show(value)} is {kind_name(value)}, not a string"
    elif vtype is not bool:
        return f"{show(value)} is {kind_name(value)}, not a boolean"
    if spec.enum is not None and value not in spec.enum:
        return f"{show(value)} is not one of {', '.join(show(v) for v in spec.enum)}"
    if spec.minimum is not None and value < spec.minimum:  # type: ignore[operator]
        return f"{show(value)} is below the minimum {_bound(spec.minimum)}"
    if spec.maximum is not None and value > spec.maximum:  # type: ignore[operator]
        return f"{show(value)} is above the maximum {_bound(spec.maximum)}"
    if spec.max_length is not None and len(value) > spec.max_length:  # type: ignore[arg-type]
        return f"{show(value)} is longer than {spec.max_length} characters"
    return None


# Integers a double holds exactly: pydantic compares a number field's value as a double,
# Python compares it exactly; within this range the two agree.
_EXACT_INT = 2**53
_INT64 = (-(2**63), 2**63 - 1)


def _errors(exc: ValidationError | None) -> list[Any]:
    return [] if exc is None else exc.errors(include_url=False)


def _valid_unicode(text: str) -> bool:
    # pydantic refuses a str with a lone surrogate (the parsers never make one).
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sure_value(spec: FieldSpec, nullable: bool) -> Callable[[object], bool]:
    """A predicate true only for values that ``value_type(spec)`` (or None when
    ``nullable``) surely accepts; false for every refused value and for edge cases
    (numbers beyond 2**53, integers beyond 64 bits) left to pydantic.

    Sound because each bound is compared exactly on a value that is itself exact (a
    double, or an integer a double holds): rounding the bound to a double, as pydantic
    does, keeps the comparison's outcome (rounding is monotonic)."""
    allowed = None if spec.enum is None else frozenset(spec.enum)
    if spec.type == "number":
        low = max(spec.minimum, -_EXACT_INT) if spec.minimum is not None else -_EXACT_INT
        high = min(spec.maximum, _EXACT_INT) if spec.maximum is not None else _EXACT_INT

        def sure(v: Any) -> bool:
            if v is None:
                return nullable
            kind = type(v)
            # NaN fails both comparisons; so does inf, past the bounds.
            return (
                (kind is float or kind is int)
                and low <= v <= high
                and (allowed is None or v in allowed)
            )

    elif spec.type == "integer":
        low_int = _INT64[0] if spec.minimum is None else max(math.ceil(spec.minimum), _INT64[0])
        high_int = _INT64[1] if spec.maximum is None else min(math.floor(spec.maximum), _INT64[1])

        def sure(v: Any) -> bool:
            if v is None:
                return nullable
            return (
                type(v) is int and low_int <= v <= high_int and (allowed is None or v in allowed)
            )

    elif spec.type == "string":
        longest = spec.max_length

        def sure(v: Any) -> bool:
            if v is None:
                return nullable
            if type(v) is not str:
                return False
            if allowed is not None and v not in allowed:
                return False  # (the enum's words are valid Unicode)
            return (longest is None or len(v) <= longest) and _valid_unicode(v)

    else:

        def sure(v: Any) -> bool:
            if v is None:
                return nullable
            return type(v) is bool and (allowed is None or v in allowed)

    return sure


def alike(spec: FieldSpec) -> Callable[[object], bool]:
    """A predicate true only for values that ``field_problem`` and ``value_type(spec)``
    (with None as field_problem's ``nullable`` says) judge alike: on those, the reason
    field_problem gives, or its None, is pydantic's verdict, and pydantic need not be
    asked. False at the edges where the two may differ (numbers beyond 2**53, integers
    beyond 64 bits, NaN and infinities, lone surrogates): there, false means "ask
    pydantic", as for ``sure_value``."""
    if spec.type == "number":
        # pydantic compares a number as a double, Python exactly: alike when the value
        # and the enum's integers are exact doubles (the bounds are finite floats: the
        # policy refuses NaN and infinities).
        if any(type(v) is int and not -_EXACT_INT <= v <= _EXACT_INT for v in spec.enum or ()):
            return _never

        def same(v: Any) -> bool:
            kind = type(v)
            if kind is int:
                return -_EXACT_INT <= v <= _EXACT_INT
            if kind is float:
                return math.isfinite(v)
            return True  # any other type: refused by both (strict: not even a bool)

    elif spec.type == "integer":
        # pydantic gets the bounds as integers (value_type). Judged alike only within
        # 64 bits, as sure_value does: beyond that is left to pydantic. (Checked as
        # integers: compiled, a float compared with an int is a double, and 2.0**63
        # would pass for 2**63 - 1.)
        bounds = [math.ceil(spec.minimum) if spec.minimum is not None else 0,
                  math.floor(spec.maximum) if spec.maximum is not None else 0]
        if any(not _INT64[0] <= b <= _INT64[1] for b in bounds):
            return _never

        def same(v: Any) -> bool:
            return type(v) is not int or _INT64[0] <= v <= _INT64[1]

    else:
        # A string or a boolean: type, enum and length are checked alike, but a str
        # with a lone surrogate is refused by pydantic only (the parsers never make one).
        def same(v: Any) -> bool:
            return type(v) is not str or _valid_unicode(v)

    return same


def _never(value: object) -> bool:
    return False


def _member_of(allowed: frozenset[object]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError("not one of the allowed values")
        return value

    return check


def value_type(spec: FieldSpec) -> Any:
    """The strict pydantic type of one field's value (never None; see FieldSet)."""
    enum_done = False
    if spec.type == "number":
        base: Any = Annotated[
            float, Strict(), Field(ge=spec.minimum, le=spec.maximum, allow_inf_nan=False)
        ]
    elif spec.type == "integer":
        # pydantic wants integer bounds on an int; for integers, v >= 1.5 is v >= 2.
        low = None if spec.minimum is None else math.ceil(spec.minimum)
        high = None if spec.maximum is None else math.floor(spec.maximum)
        base = Annotated[int, Strict(), Field(ge=low, le=high)]
    elif spec.type == "string":
        if spec.enum is not None and spec.max_length is None:
            # Literal is validated in Rust; the usual case (an enum of words) stays fast.
            base = Literal[tuple(spec.enum)]
            enum_done = True
        else:
            base = Annotated[str, Strict(), Field(max_length=spec.max_length)]
    else:
        base = Annotated[bool, Strict()]
    if spec.enum is not None and not enum_done:
        # Not Literal: pydantic's Literal[1, 2] would accept true and 1.0 even in strict mode.
        base = Annotated[base, AfterValidator(_member_of(frozenset(spec.enum)))]
    return base


class FieldSet:
    """The declared fields of one flat object, with a validator built once.

    ``nullable``: a JSON null is a valid value (config: null removes a desired key or
    resets a config field, RFC 7396). ``agent``: fields with ``agent_writable: false``
    are refused by name instead of validated.
    """

    __slots__ = (
        "owner", "what", "specs", "readonly", "required", "nullable", "rules", "_rank", "_adapter",
        "_sure",
    )

    def __init__(
        self,
        owner: str,
        what: str,
        specs: Mapping[str, FieldSpec],
        *,
        agent: bool,
        nullable: bool,
        honour_required: bool,
        rules: Mapping[str, str] | None = None,
    ) -> None:
        self.owner = owner  # e.g. "device type thermostat", "command reboot"
        # field name -> "file:line (device_types.T.config.F)": a refusal names the field's rule
        self.rules: Mapping[str, str] = rules or {}
        self.what = what  # e.g. "config field", "payload field"
        self.specs: dict[str, FieldSpec] = {
            name: spec for name, spec in specs.items() if spec.agent_writable or not agent
        }
        self.readonly = frozenset(specs) - frozenset(self.specs)
        self.required: tuple[str, ...] = (
            tuple(name for name, spec in self.specs.items() if spec.required)
            if honour_required
            else ()
        )
        self.nullable = nullable
        self._rank = {name: RISK_ORDER[spec.risk] for name, spec in self.specs.items()}
        # name -> (risk rank, sure_value predicate, alike predicate, spec): one lookup per
        # key on the usual path, and on a refusal's.
        self._sure: dict[str, tuple[int, Callable[[object], bool], Callable[[object], bool],
                                    FieldSpec]] = {
            name: (RISK_ORDER[spec.risk], sure_value(spec, nullable), alike(spec), spec)
            for name, spec in self.specs.items()
        }
        members: dict[str, Any] = {}
        for name, spec in self.specs.items():
            vtype = value_type(spec)
            if nullable:
                vtype = vtype | None
            members[name] = Required[vtype] if name in self.required else NotRequired[vtype]
        # Called through Any: the field names are only known at run time.
        make_typed_dict: Any = TypedDict
        shape = make_typed_dict("FieldSetShape", members)
        shape.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)
        self._adapter: TypeAdapter[Any] = TypeAdapter(shape)

    def check(self, obj: dict[str, object], prefix: str) -> tuple[str, int, str | None]:
        """(reason, highest risk rank of the keys, rule): reason is "" when the object is
        valid; rule names the policy line of the field that refused it (None: no field's).

        ``prefix`` is the path of ``obj`` in the payload, e.g. "state.desired.".
        """
        # One walk: every value surely valid (sure_value) answers at once; a refused
        # value, or a key that is not a writable field, before any doubt answers with
        # its reason (alike); any doubt leaves the values to pydantic.
        rank = 0
        sure_all = True
        doubt = False
        for key, value in obj.items():
            entry = self._sure.get(key)
            if entry is None:
                return self._explain(obj, prefix, None)  # named without pydantic
            key_rank, sure, same, spec = entry
            if key_rank > rank:
                rank = key_rank
            if doubt or sure(value):
                continue
            sure_all = False
            if not same(value):
                doubt = True  # keys after it are still read for their names
                continue
            problem = field_problem(spec, value, nullable=self.nullable)
            if problem is not None:
                return self._refusal(prefix, key, problem)
        if sure_all and all(name in obj for name in self.required):
            return "", rank, None
        try:
            # Values, and required fields (Required[...] in the shape).
            self._adapter.validate_python(obj)
        except ValidationError as exc:
            return self._explain(obj, prefix, exc)
        return "", rank, None

    def sure_rank(self, obj: dict[str, object]) -> int:
        """The highest risk rank of the keys when every key is a field and every value
        surely valid (``sure_value``) and no required field is missing; else -1 (then
        ``check`` answers). Never -1 for a refusal only: -1 is "not sure". The per-packet
        question, so it asks nothing else."""
        rank = 0
        sure = self._sure
        for key, value in obj.items():
            entry = sure.get(key)
            if entry is None:
                return -1
            key_rank, sure_ok = entry[0], entry[1]
            if not sure_ok(value):
                return -1
            if key_rank > rank:
                rank = key_rank
        for name in self.required:
            if name not in obj:
                return -1
        return rank

    def _refusal(self, prefix: str, key: str, problem: str) -> tuple[str, int, str | None]:
        return f"{prefix}{key}: {problem}", 0, self.rules.get(key)

    def _explain(
        self, obj: dict[str, object], prefix: str, exc: ValidationError | None
    ) -> tuple[str, int, str | None]:
        """The reason for a refusal (slow path): the first refused key in payload order,
        with the rule of that field. pydantic's own messages are read only when
        ``field_problem`` has none (building them costs as much as the validation)."""
        errors: list[Any] | None = None
        rules = self.rules
        for key, value in obj.items():
            spec = self.specs.get(key)
            if spec is None:
                if key in self.readonly:
                    return f"{prefix}{key}: {key} is not writable by an agent", 0, rules.get(key)
                return f"{prefix}{key_text(key)}: not a {self.what} of {self.owner}", 0, None
            problem = field_problem(spec, value, nullable=self.nullable)
            if problem is None:
                # field_problem mirrors value_type; should they ever differ, pydantic's
                # verdict stands and its message is shown.
                errors = _errors(exc) if errors is None else errors
                problem = next((e["msg"] for e in errors if e["loc"][:1] == (key,)), None)
            if problem:
                return self._refusal(prefix, key, problem)
        for name in self.required:
            if name not in obj:
                return f"{prefix}{name}: required by {self.owner} but missing", 0, rules.get(name)
        errors = _errors(exc) if errors is None else errors
        message = errors[0]["msg"] if errors else "refused"
        return f"{prefix.rstrip('.') or 'payload'}: {message}", 0, None
