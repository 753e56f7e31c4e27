"""Who is calling the admin API: a bearer token the guard signed, and the policy's word.

Pure: a header, the secret, a directory of who the policy lists, and an explicit ``now``
in; a ``Principal`` or an ``AuthError`` out. 401 when the caller is unknown (no token, not
a bearer token, bad signature, expired) -- with ``WWW-Authenticate: Bearer`` (RFC 6750
§3); 403 when the caller is known but not allowed (an agent's token, an approver or admin
the policy does not list, a role the route does not take).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..tokens import ROLE_ADMIN, ROLE_AGENT, ROLE_APPROVER, ROLES, TokenError, verify_token


class AuthError(Exception):
    """A refused caller: HTTP ``status``, a short machine ``error`` and a ``detail`` for people."""

    def __init__(self, status: int, error: str, detail: str):
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(detail)


class Directory(Protocol):
    """Who the policy in force lists (asked at every request: a policy swap takes effect)."""

    def approver_levels(self, approver: str) -> set[int]: ...

    def is_admin(self, admin: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: str  # approver | admin
    levels: frozenset[int]  # levels it may decide at (empty: may look, not decide)
    token_id: str
    expires_at: float


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    if not header:
        raise AuthError(
            401, "unauthorized",
            "send Authorization: Bearer <token> (iot-guard token issue --approver ID)",
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def authenticate(
    header: str | None,
    secret: bytes,
    directory: Directory,
    now: float,
    roles: frozenset[str] = frozenset({ROLE_APPROVER, ROLE_ADMIN}),
) -> Principal:
    """The caller of a route that takes ``roles``, or AuthError (401 or 403)."""
    token = bearer_token(header)
    try:
        claims = verify_token(secret, token, now, roles=ROLES)
    except TokenError as err:
        raise AuthError(401, "unauthorized", f"token refused: {err}") from None
    if claims.role == ROLE_AGENT:
        # An agent identity can never look at or decide approvals (issue 7 §3).
        raise AuthError(403, "forbidden", "an agent token cannot use the admin API")
    levels = frozenset(directory.approver_levels(claims.agent_id))
    if claims.role == ROLE_APPROVER and not levels:
        raise AuthError(
            403, "forbidden", f"approver {claims.agent_id!r} is not listed in the policy"
        )
    if claims.role == ROLE_ADMIN and not directory.is_admin(claims.agent_id):
        raise AuthError(403, "forbidden", f"admin {claims.agent_id!r} is not listed in the policy")
    if claims.role not in roles:
        raise AuthError(
            403, "forbidden",
            f"this needs a token of role {' or '.join(sorted(roles))}, not {claims.role}",
        )
    return Principal(
        id=claims.agent_id,
        role=claims.role,
        levels=levels,
        token_id=claims.token_id,
        expires_at=claims.expires_at,
    )
