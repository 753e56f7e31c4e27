"""Who the policy in force lists as approvers and admins (the admin API's ``Directory``).

Asked at every request, so a policy reload that removes an approver locks them out at
once. Approver levels come from the ApprovalService when one runs, else from
``iot_guard.approvals.chains`` (one source for that rule); admins from ``approvals.admins``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..approvals.chains import approver_levels
from ..policy_models import PolicyDocument
from ..tokens import ROLE_ADMIN, ROLE_APPROVER


class LevelsSource(Protocol):
    def approver_levels(self, approver: str) -> set[int]: ...


def document_is_admin(document: PolicyDocument, admin: str) -> bool:
    return admin in document.approvals.admins


def listed_problem(document: PolicyDocument, role: str, subject: str) -> str | None:
    """Why a token for ``subject`` with ``role`` would be refused by this policy (or None)."""
    if role == ROLE_APPROVER and not approver_levels(document.approvals, subject):
        return f"approver {subject!r} is not listed in the policy's approvals.approvers"
    if role == ROLE_ADMIN and not document_is_admin(document, subject):
        return f"admin {subject!r} is not listed in the policy's approvals.admins"
    return None


class PolicyDirectory:
    """Approvers' levels from the approvals service (or the document), admins from the
    document; ``document`` returns the policy in force (it changes on reload)."""

    def __init__(
        self, document: Callable[[], PolicyDocument], levels: LevelsSource | None = None
    ) -> None:
        self._document = document
        self._levels = levels

    def approver_levels(self, approver: str) -> set[int]:
        if self._levels is not None:
            return set(self._levels.approver_levels(approver))
        return approver_levels(self._document().approvals, approver)

    def is_admin(self, admin: str) -> bool:
        return document_is_admin(self._document(), admin)
