"""Webhook signing, replay window, backoff and message text (pure: no network)."""

from __future__ import annotations

import json

import pytest

from iot_guard.approvals.webhooks import (
    SignatureError,
    message_text,
    redact_url,
    retry_delays,
    sign,
    verify_signature,
    webhook_body,
)

from .admin_fakes import make_view

SECRET = b"webhook-secret"
NOW = 1_800_000_000


def test_signature_verifies_over_timestamp_and_exact_body() -> None:
    body = webhook_body(make_view("r-1", NOW), "d-1", NOW)
    header = sign(SECRET, NOW, body)
    assert header.startswith(f"t={NOW},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_signature(SECRET, header, body, NOW + 10) == NOW


@pytest.mark.parametrize("change", ["body", "secret", "timestamp", "missing", "no-v1"])
def test_tampering_is_refused(change: str) -> None:
    body = b'{"a":1}'
    header = sign(SECRET, NOW, body)
    if change == "body":
        body = b'{"a":2}'
    secret = b"other" if change == "secret" else SECRET
    if change == "timestamp":  # a newer timestamp with the old signature
        header = header.replace(f"t={NOW}", f"t={NOW + 1}")
    header_or_none: str | None = None if change == "missing" else header
    if change == "no-v1":
        header_or_none = f"t={NOW}"
    with pytest.raises(SignatureError):
        verify_signature(secret, header_or_none, body, NOW)


def test_replay_window_refuses_old_and_future_timestamps() -> None:
    body = b"{}"
    header = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, header, body, NOW + 300) == NOW
    with pytest.raises(SignatureError, match="outside the window"):
        verify_signature(SECRET, header, body, NOW + 301)
    with pytest.raises(SignatureError, match="outside the window"):
        verify_signature(SECRET, header, body, NOW - 301)


def test_a_rotated_secret_may_sign_alongside_the_old_one() -> None:
    body = b"{}"
    new = sign(b"new-secret", NOW, body).split(",")[1]
    header = f"{sign(SECRET, NOW, body)},{new}"
    assert verify_signature(b"new-secret", header, body, NOW) == NOW
    assert verify_signature(SECRET, header, body, NOW) == NOW


def test_backoff_doubles_and_is_bounded() -> None:
    assert retry_delays(6, 1.0, 10.0) == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert retry_delays(1, 1.0, 10.0) == []


def test_body_has_slack_text_and_leaves_the_payload_in_the_guard() -> None:
    view = make_view("r-7", NOW, status="denied",
                     history=[{"at": NOW, "who": "bob", "action": "denied", "reason": "no"}])
    body = webhook_body(view, "d-9", NOW)
    data = json.loads(body)
    assert data["type"] == "approval.denied" and data["delivery"] == "d-9"
    assert "payload" not in data["request"] and data["request"]["payload_sha256"]
    assert data["text"] == message_text(view)
    assert "r-7 denied" in data["text"] and "denied by bob: no" in data["text"]
    assert "2 devices" in data["text"]


def test_pending_text_says_why_and_where() -> None:
    text = message_text(make_view("r-1", NOW))
    assert "pending" in text and "level 1" in text and "firmware_channel is high risk" in text


def test_url_is_redacted_to_its_origin() -> None:
    assert redact_url("https://user:pw@hooks.example/services/T0/B0/secret") == (
        "https://hooks.example/..."
    )
