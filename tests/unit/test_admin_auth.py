"""Roles in tokens and who may call the admin API (pure: fake clock, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_guard.admin.auth import AuthError, authenticate, bearer_token
from iot_guard.tokens import TokenError, issue_token, verify_token

SECRET = b"admin-test-secret-admin-test-secret-42"
NOW = 1_800_000_000.0
POLICY = Path(__file__).parents[2] / "device_policies"


class Directory:
    def approver_levels(self, approver: str) -> set[int]:
        return {"alice": {1}, "bob": {2}, "secops": {3}}.get(approver, set())

    def is_admin(self, admin: str) -> bool:
        return admin == "secops"


def token(subject: str, role: str, ttl: float = 60) -> str:
    return issue_token(SECRET, subject, ttl_s=ttl, role=role, now=NOW)


def refused(header: str | None, **kwargs: object) -> AuthError:
    with pytest.raises(AuthError) as err:
        authenticate(header, SECRET, Directory(), NOW + 1, **kwargs)  # type: ignore[arg-type]
    return err.value


def test_role_round_trips_and_agent_is_the_default() -> None:
    assert verify_token(SECRET, token("alice", "approver"), NOW, roles=frozenset({"approver"})
                        ).role == "approver"
    legacy = issue_token(SECRET, "ops-agent", now=NOW)  # no role claim: an agent token
    assert verify_token(SECRET, legacy, NOW).role == "agent"
    assert "role" not in legacy  # agent tokens are unchanged on the wire


def test_the_mqtt_door_refuses_approver_and_admin_tokens() -> None:
    for role in ("approver", "admin"):
        with pytest.raises(TokenError) as err:
            verify_token(SECRET, token("alice", role), NOW)  # default roles: agent only
        assert err.value.kind == "wrong_role"


def test_role_claim_is_signed_and_checked() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        issue_token(SECRET, "alice", role="root")
    with pytest.raises(ValueError, match="tool list"):
        issue_token(SECRET, "alice", role="approver", tools=["x"])
    # Lift an approver's claims onto an agent token's signature: the signature fails.
    prefix, _, signature = issue_token(SECRET, "alice", now=NOW).split(".")
    claims = token("alice", "approver").split(".")[1]
    with pytest.raises(TokenError) as err:
        verify_token(SECRET, f"{prefix}.{claims}.{signature}", NOW, roles=frozenset({"approver"}))
    assert err.value.kind == "bad_signature"


def test_missing_or_malformed_header_is_401() -> None:
    for header in (None, "", "Basic YWxpY2U6eA==", "Bearer", "Bearer  "):
        err = refused(header)
        assert (err.status, err.error) == (401, "unauthorized")
    assert bearer_token("bearer abc ") == "abc"  # the scheme is case-insensitive


def test_bad_signature_and_expired_tokens_are_401() -> None:
    forged = issue_token(b"y" * 40, "alice", role="approver", now=NOW)
    assert refused(f"Bearer {forged}").status == 401
    err = refused(f"Bearer {token('alice', 'approver', ttl=1)}")
    assert err.status == 401 and "expired" in err.detail


def test_agent_token_is_403_even_for_a_listed_name() -> None:
    err = refused(f"Bearer {issue_token(SECRET, 'alice', now=NOW)}")
    assert (err.status, err.error) == (403, "forbidden")
    assert "agent token" in err.detail


def test_unlisted_approver_and_admin_are_403() -> None:
    err = refused(f"Bearer {token('mallory', 'approver')}")
    assert err.status == 403 and "mallory" in err.detail and "not listed" in err.detail
    err = refused(f"Bearer {token('alice', 'admin')}")  # alice approves, is no admin
    assert err.status == 403 and "admin 'alice'" in err.detail


def test_listed_callers_get_their_levels() -> None:
    who = authenticate(f"Bearer {token('bob', 'approver')}", SECRET, Directory(), NOW + 1)
    assert (who.id, who.role, who.levels, who.expires_at) == ("bob", "approver", {2}, NOW + 60)
    admin = authenticate(f"Bearer {token('secops', 'admin')}", SECRET, Directory(), NOW + 1)
    assert admin.role == "admin" and admin.levels == {3}


def test_a_route_may_take_one_role_only() -> None:
    err = refused(f"Bearer {token('alice', 'approver')}", roles=frozenset({"admin"}))
    assert err.status == 403 and "role admin" in err.detail


def test_policy_directory_and_token_issue_checks() -> None:
    from iot_guard.admin.directory import PolicyDirectory, listed_problem
    from iot_guard.policy.loader import load_policy

    document = load_policy(POLICY)
    directory = PolicyDirectory(lambda: document)
    assert directory.approver_levels("bob") == {2}
    assert directory.approver_levels("ops-agent") == set()
    assert directory.is_admin("secops") and not directory.is_admin("alice")
    assert listed_problem(document, "approver", "carol") is None
    assert "not listed" in (listed_problem(document, "approver", "mallory") or "")
    assert "approvals.admins" in (listed_problem(document, "admin", "alice") or "")


def test_webhook_policy_needs_exactly_one_secret_and_reads_the_environment() -> None:
    from pydantic import ValidationError

    from iot_guard.approvals.webhooks import targets_from_policy
    from iot_guard.policy_models import Webhook

    hook = Webhook(url="https://hooks.example/x", secret_env="HOOK_SECRET")
    (target,) = targets_from_policy([hook], {"HOOK_SECRET": "s3cret"})
    assert (target.url, target.secret) == ("https://hooks.example/x", b"s3cret")
    with pytest.raises(ValueError, match="HOOK_SECRET is not set"):
        targets_from_policy([hook], {})
    for bad in ({"url": "https://h/x"}, {"url": "ftp://h/x", "secret": "x" * 16},
                {"url": "https://h/x", "secret": "x" * 16, "secret_env": "A"}):
        with pytest.raises(ValidationError):
            Webhook(**bad)  # type: ignore[arg-type]
