"""Hypothesis strategies the payload tests share."""

from __future__ import annotations

from hypothesis import strategies as st

from iot_guard.policy_models import FieldSpec


def field_specs(
    bounds: st.SearchStrategy[int | float | None],
    enum_ints: st.SearchStrategy[int],
    enum_strings: list[str],
) -> st.SearchStrategy[FieldSpec]:
    """Random config field specs: number/integer with bounds and enums, strings with
    enums and lengths, booleans."""

    @st.composite
    def specs(draw: st.DrawFn) -> FieldSpec:
        kind = draw(st.sampled_from(["number", "integer", "string", "boolean"]))
        data: dict[str, object] = {"type": kind}
        if kind in ("number", "integer"):
            low, high = draw(bounds), draw(bounds)
            if low is not None and high is not None and low > high:
                low, high = high, low
            data["minimum"], data["maximum"] = low, high
            if draw(st.booleans()):
                data["enum"] = draw(st.lists(enum_ints, min_size=1, max_size=3))
        elif kind == "string":
            if draw(st.booleans()):
                data["enum"] = draw(st.lists(st.sampled_from(enum_strings), min_size=1))
            if draw(st.booleans()):
                data["max_length"] = draw(st.integers(0, 3))
        return FieldSpec.model_validate(data)

    return specs()
