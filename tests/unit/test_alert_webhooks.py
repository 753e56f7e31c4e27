"""Guard alerts (limits, anomalies) through the signed webhooks (pure: no network)."""

from __future__ import annotations

import json
from typing import Any

from iot_guard.approvals.webhooks import (
    WebhookNotifier,
    WebhookTarget,
    event_type,
    sign,
    verify_signature,
    webhook_body,
)
from iot_guard.checks.alerts import Alert

SECRET = b"webhook-secret"
NOW = 1_800_000_000


def test_an_alert_becomes_a_signed_alert_event() -> None:
    notifier = WebhookNotifier([WebhookTarget("http://hooks.example/x", SECRET)], lambda r: None)
    queued: list[dict[str, Any]] = []
    notifier.notify = queued.append  # type: ignore[method-assign, assignment]
    notifier.on_alert(Alert(
        "rate_spike", "ops-agent", "s-1", "block", "anomaly: agent ops-agent used ...", NOW,
        "shadow_get", {"rule": "anomaly.yaml:9 (anomaly.rate_spike)", "topic": "t/1"}, 3))
    (view,) = queued
    assert view["kind"] == "alert" and event_type(view) == "alert.rate_spike"
    body = webhook_body(view, "d-1", NOW)
    doc = json.loads(body)
    assert doc["type"] == "alert.rate_spike" and doc["delivery"] == "d-1"
    assert doc["text"].startswith("[iot-guard] block rate_spike: anomaly: agent ops-agent")
    assert doc["alert"]["agent_id"] == "ops-agent" and doc["alert"]["suppressed"] == 3
    assert doc["alert"]["rule"] == "rate_spike" and doc["alert"]["topic"] == "t/1"
    assert doc["alert"]["where"] == "anomaly.yaml:9 (anomaly.rate_spike)"
    assert verify_signature(SECRET, sign(SECRET, NOW, body), body, NOW) == NOW


def test_no_targets_no_alert_events() -> None:
    notifier = WebhookNotifier([], lambda r: None)
    queued: list[dict[str, Any]] = []
    notifier.notify = queued.append  # type: ignore[method-assign, assignment]
    notifier.on_alert(Alert("first_use", "a", None, "alert", "r", NOW))
    assert queued == []
