"""JSON merge patch (RFC 7396), the one implementation the guard and the simulator share."""

from __future__ import annotations

import copy
from typing import cast


def merge_patch(target: dict[str, object], patch: dict[str, object]) -> dict[str, object]:
    """Apply ``patch`` to ``target`` as RFC 7396 section 2 describes; return a new dict.

    Neither argument is modified and the result shares no mutable value with them, so
    a device may keep the result as its new state while the caller keeps the patch.
    A ``None`` (JSON null) member removes the key; an object member merges recursively
    (into ``{}`` when the target's member is absent or not an object); any other member
    (including an array) replaces the target's member whole.
    """
    if not isinstance(patch, dict):
        raise TypeError("a merge patch applied with merge_patch() must be a dict")
    return cast(dict[str, object], _merge(target, patch))


def _merge(target: object, patch: object) -> object:
    if not isinstance(patch, dict):
        # RFC 7396: "If Patch is not an Object, return Patch" (a copy: no aliasing).
        return copy.deepcopy(patch)
    base = target if isinstance(target, dict) else {}
    result: dict[str, object] = {}
    # Walk the target first so that its keys keep their order.
    for key, value in base.items():
        if key not in patch:
            result[key] = copy.deepcopy(value)
        elif patch[key] is not None:
            result[key] = _merge(value, patch[key])
    for key, value in patch.items():
        if key not in base and value is not None:
            result[key] = _merge(None, value)
    return result
