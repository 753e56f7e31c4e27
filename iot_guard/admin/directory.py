"""Who the policy in force lists as approvers and admins (the admin API's ``Directory``).

Asked at every request, so a policy reload that removes an approver locks them out at
once. Approver levels come from the ApprovalService (one source for that rule); admins
from the policy's ``approvals.admins``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..tokens import ROLE_ADMIN, ROLE_APPROVER


class LevelsSource(Protocol):
    def approver_levels(self, approver: str) -> set[int]: ...


def _section(document: Any) -> Any:
    return getattr(document, "approvals", None)


def document_approver_levels(document: Any, approver: str) -> set[int]:
    section = _section(document)
    entry = section.approvers.get(approver) if section is not None else None
    return set(entry.levels) if entry is not None else set()


def document_is_admin(document: Any, admin: str) -> bool:
    section = _section(document)
    return section is not None and admin in section.admins


def listed_problem(document: Any, role: str, subject: str) -> str | None:
    """Why a token for ``subject`` with ``role`` would be refused by this policy (or None)."""
    if role == ROLE_APPROVER and not document_approver_levels(document, subject):
        return f"approver {subject!r} is not listed in the policy's approvals.approvers"
    if role == ROLE_ADMIN and not document_is_admin(document, subject):
        return f"admin {subject!r} is not listed in the policy's approvals.admins"
    return None


class PolicyDirectory:
    """Approvers' levels from the approvals service (or the document), admins from the
    document; ``document`` returns the policy in force (it changes on reload)."""

    def __init__(self, document: Callable[[], Any], levels: LevelsSource | None = None) -> None:
        self._document = document
        self._levels = levels

    def approver_levels(self, approver: str) -> set[int]:
        if self._levels is not None:
            return set(self._levels.approver_levels(approver))
        return document_approver_levels(self._document(), approver)

    def is_admin(self, admin: str) -> bool:
        return document_is_admin(self._document(), admin)
