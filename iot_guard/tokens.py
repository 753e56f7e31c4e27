"""Short-lived tokens: HMAC-SHA256 signed claims, for agents, approvers and admins.

Wire form: ``igt1.<claims>.<signature>``, both parts unpadded base64url. The claims are
compact JSON: ``sub`` (agent, approver or admin id), ``iat`` and ``exp`` (epoch seconds),
``jti`` (token id, for the audit log and revocation later), optionally ``tools`` (a
narrower allowlist than the agent's) and ``role``: ``agent`` when absent (every token
minted before roles existed), ``approver`` or ``admin`` (the admin HTTP API). The agent
presents its token as its MQTT password; it never holds broker credentials. A token is
good for one role only: ``verify_token`` refuses an approver's token at the MQTT door and
the admin API tells an agent's token apart, so one kind can never stand in for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "igt1"
MIN_SECRET_BYTES = 32
MAX_TOKEN_BYTES = 4096
# The longest lifetime a token may have when the policy says nothing else (24 h): a leaked
# token must not stay useful for long. Agents set theirs with `max_token_ttl_s`.
DEFAULT_MAX_TTL_S = 86400
ROLE_AGENT, ROLE_APPROVER, ROLE_ADMIN = "agent", "approver", "admin"
ROLES = frozenset({ROLE_AGENT, ROLE_APPROVER, ROLE_ADMIN})


class TokenError(Exception):
    """Why a token is refused; ``kind`` is one of malformed, bad_signature, expired,
    wrong_role, too_long_lived."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    agent_id: str
    issued_at: float
    expires_at: float
    token_id: str
    tools: frozenset[str] | None = None
    role: str = ROLE_AGENT


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def check_secret(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the token secret must be at least {MIN_SECRET_BYTES} bytes (got {len(secret)}); "
            "make one with `iot-guard token secret > guard.secret`"
        )
    return secret


def read_credential_file(path: Path | str) -> str:
    """A token or password kept in a file as one line of UTF-8 text (surrounding whitespace
    ignored). Raises ValueError with one line naming the file: unreadable, not UTF-8 text,
    or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def read_secret_file(path: Path | str) -> bytes:
    """The secret file holds the key as text (surrounding whitespace ignored)."""
    return check_secret(Path(path).read_bytes().strip())


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def issue_token(
    secret: bytes,
    agent_id: str,
    ttl_s: float = 900,
    tools: list[str] | None = None,
    *,
    now: float | None = None,
    role: str = ROLE_AGENT,
) -> str:
    """Mint a token for ``agent_id`` (an approver's or admin's id with ``role``) valid for
    ``ttl_s`` seconds."""
    check_secret(secret)
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {sorted(ROLES)}")
    if tools is not None and role != ROLE_AGENT:
        raise ValueError("only agent tokens carry a tool list")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "sub": agent_id,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
        "jti": secrets.token_hex(8),
    }
    if tools is not None:
        claims["tools"] = sorted(set(tools))
    if role != ROLE_AGENT:  # agent tokens stay as they were: no role claim means agent
        claims["role"] = role
    body = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signed_part = f"{PREFIX}.{body}"
    return f"{signed_part}.{_b64encode(_signature(secret, signed_part))}"


def check_lifetime(claims: TokenClaims, max_ttl_s: float) -> TokenClaims:
    """Refuse a token issued for longer than ``max_ttl_s`` (the agent's ``max_token_ttl_s``).

    Checked at CONNECT as well as at issue: a token minted by other means (or before the
    policy lowered the limit) gets no longer than the policy allows.
    """
    lifetime = claims.expires_at - claims.issued_at
    if lifetime > max_ttl_s:
        raise TokenError(
            "too_long_lived",
            f"token lifetime {int(lifetime)} s is above the agent's maximum {int(max_ttl_s)} s",
        )
    return claims


def verify_token(
    secret: bytes,
    token: str | bytes,
    now: float,
    roles: frozenset[str] = frozenset({ROLE_AGENT}),
    max_ttl_s: float | None = None,
) -> TokenClaims:
    """Check signature first, then shape, then expiry, then that the token's role is one of
    ``roles`` (agent only by default: the MQTT door), then (when given) the lifetime against
    ``max_ttl_s``; raise TokenError if refused."""
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("malformed", "token too long")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise TokenError("malformed", "token is not ASCII") from None
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed", f"not an iot-guard token (expected {PREFIX}.<claims>.<sig>)")
    signed_part = f"{parts[0]}.{parts[1]}"
    try:
        signature = _b64decode(parts[2])
    except ValueError:
        raise TokenError("malformed", "signature is not base64url") from None
    # Compare in constant time so the signature cannot be guessed byte by byte.
    if not hmac.compare_digest(signature, _signature(secret, signed_part)):
        raise TokenError("bad_signature", "token signature does not verify")
    claims = _claims(parts[1])
    if now >= claims.expires_at:
        raise TokenError("expired", f"token expired {int(now - claims.expires_at)} s ago")
    if claims.role not in roles:
        raise TokenError(
            "wrong_role",
            f"this is an {claims.role} token; expected {' or '.join(sorted(roles))}",
        )
    return claims if max_ttl_s is None else check_lifetime(claims, max_ttl_s)


def _claims(body: str) -> TokenClaims:
    try:
        claims = json.loads(_b64decode(body))
        agent_id = claims["sub"]
        issued_at = float(claims["iat"])
        expires_at = float(claims["exp"])
        token_id = str(claims["jti"])
        tools = claims.get("tools")
        role = claims.get("role", ROLE_AGENT)
        if not isinstance(agent_id, str) or role not in ROLES or (
            tools is not None
            and not (isinstance(tools, list) and all(isinstance(t, str) for t in tools))
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed", "token claims are malformed") from None
    return TokenClaims(
        agent_id=agent_id,
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=token_id,
        tools=frozenset(tools) if tools is not None else None,
        role=role,
    )


def unverified_claims(token: str) -> TokenClaims:
    """What a token says, without checking its signature or expiry.

    For the agent's own side (e.g. the MCP server), which holds no secret: it reads its
    token's expiry and tool list to warn before expiry and export the narrowed tools.
    Never use it to authorize anything.
    """
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed", f"not an iot-guard token (expected {PREFIX}.<claims>.<sig>)")
    return _claims(parts[1])
