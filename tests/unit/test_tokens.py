"""Agent tokens: signed, short-lived, optionally narrowed."""

from __future__ import annotations

import pytest

from iot_guard.tokens import TokenError, issue_token, verify_token

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
