"""Agent tokens: signed, short-lived, optionally narrowed."""

from __future__ import annotations

import pytest

from iot_guard.tokens import (
    DEFAULT_MAX_TTL_S,
    TokenError,
    check_lifetime,
    issue_token,
    verify_token,
)

SECRET = b"token-test-secret-token-test-secret-42"
NOW = 1_800_000_000.0


def test_round_trip_carries_agent_expiry_and_tools() -> None:
    token = issue_token(SECRET, "ops-agent", ttl_s=60, tools=["b", "a"], now=NOW)
    claims = verify_token(SECRET, token, NOW + 30)
    assert claims.agent_id == "ops-agent"
    assert claims.expires_at == NOW + 60
    assert claims.tools == frozenset({"a", "b"})
    assert claims.token_id


def test_expired_token_is_refused() -> None:
    token = issue_token(SECRET, "ops-agent", ttl_s=60, now=NOW)
    with pytest.raises(TokenError) as err:
        verify_token(SECRET, token, NOW + 60)
    assert err.value.kind == "expired"


def test_wrong_secret_and_tampered_claims_are_refused() -> None:
    token = issue_token(SECRET, "observer", now=NOW)
    with pytest.raises(TokenError) as err:
        verify_token(b"x" * 40, token, NOW)
    assert err.value.kind == "bad_signature"
    prefix, claims, signature = token.split(".")
    # Swap in claims for another agent, keeping the old signature.
    other = issue_token(SECRET, "ops-agent", now=NOW).split(".")[1]
    with pytest.raises(TokenError) as err:
        verify_token(SECRET, f"{prefix}.{other}.{signature}", NOW)
    assert err.value.kind == "bad_signature"


@pytest.mark.parametrize("token", ["", "abc", "igt1.x", "igt2.a.b", b"\xff\xfe", "igt1.a.b.c"])
def test_malformed_tokens_are_refused(token: str | bytes) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token, NOW)


def test_short_secrets_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue_token(b"short", "ops-agent")


def test_a_token_longer_lived_than_the_agents_maximum_is_refused() -> None:
    """The policy's max_token_ttl_s holds at CONNECT too, not only at `token issue`."""
    token = issue_token(SECRET, "ops-agent", ttl_s=7200, now=1000.0)
    assert verify_token(SECRET, token, now=1001.0, max_ttl_s=7200).agent_id == "ops-agent"
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, token, now=1001.0, max_ttl_s=3600)
    assert info.value.kind == "too_long_lived"
    assert str(info.value) == "token lifetime 7200 s is above the agent's maximum 3600 s"
    claims = verify_token(SECRET, token, now=1001.0)
    with pytest.raises(TokenError):
        check_lifetime(claims, 7199)
    assert check_lifetime(claims, DEFAULT_MAX_TTL_S) is claims
    assert DEFAULT_MAX_TTL_S == 24 * 3600
