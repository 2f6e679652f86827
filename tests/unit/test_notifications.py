"""Notifications without a receiver: the signature and its check, what makes two events repeats of one, the
payload's fields, the settings that switch the webhook on, and the secrets a body is cleaned of."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from pydantic import ValidationError

from agent_service.config import describe_invalid_settings
from agent_service.notifications import NO_NOTIFICATIONS, Event, EventType, build_notifier
from agent_service.notifications.events import payload
from agent_service.notifications.sender import WebhookSender, secret_values
from agent_service.notifications.signing import signature_header, verify
from tests.support import make_settings

BODY = b'{"event": "paused"}'
NOW = 1_800_000_000


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body_and_verifies():
    header = signature_header(BODY, secret="k3y", timestamp=NOW)
    expected = hmac.new(b"k3y", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify(BODY, header, secret="k3y", now=NOW + 10)


@pytest.mark.parametrize(
    ("body", "secret", "now"),
    [
        (BODY + b" ", "k3y", NOW),  # the body changed
        (BODY, "other", NOW),  # another key
        (BODY, "k3y", NOW + 301),  # replayed after the tolerance
        (BODY, "k3y", NOW - 301),  # signed in the future beyond any clock skew
    ],
)
def test_a_changed_body_another_key_or_an_old_timestamp_does_not_verify(body, secret, now):
    assert not verify(body, signature_header(BODY, secret="k3y", timestamp=NOW), secret=secret, now=now)


@pytest.mark.parametrize("header", ["", "v1=abc", "t=soon,v1=abc", f"t={NOW}"])
def test_a_malformed_signature_header_does_not_verify(header):
    assert not verify(BODY, header, secret="k3y", now=NOW)


def test_repeats_share_a_key_by_type_and_labels_not_details():
    first = Event(EventType.TASK_DEAD_LETTERED, "task 1 failed", {"agent_id": "a"}, {"task_id": "1"})
    second = Event(EventType.TASK_DEAD_LETTERED, "task 2 failed", {"agent_id": "a"}, {"task_id": "2"})
    other_agent = Event(EventType.TASK_DEAD_LETTERED, "task 3 failed", {"agent_id": "b"})
    assert first.key("h1") == second.key("h2") != other_agent.key("h1")


def test_an_event_about_one_host_is_never_collapsed_with_another_hosts():
    down = Event(EventType.DATABASE_UNREACHABLE, "database not answering")
    assert down.key("worker-1") != down.key("worker-2")


def test_the_payload_has_slacks_text_and_the_structured_fields():
    event = Event(EventType.BREAKER_OPENED, "breaker opened for m", {"provider": "p", "model": "m"}, {"cause": "x"})
    body = payload(event, host="w1", pid=7, at=NOW, repeats=3, window_seconds=300)
    assert body["text"].startswith(":red_circle: [critical] breaker opened for m (and 3 more like it within 300 s)")
    assert (body["event"], body["severity"], body["host"], body["pid"]) == ("breaker_opened", "critical", "w1", 7)
    assert body["labels"] == {"provider": "p", "model": "m"} and body["details"] == {"cause": "x"}
    assert body["timestamp"] == "2027-01-15T08:00:00.000Z"
    json.dumps(body)


def test_without_a_url_nothing_is_built_and_notifying_costs_nothing():
    assert build_notifier(make_settings()) is NO_NOTIFICATIONS
    NO_NOTIFICATIONS.notify(Event(EventType.PAUSED, "paused"))
    assert NO_NOTIFICATIONS.close(timeout=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"alert_webhook_url": "https://hooks.example/T0/B0/tok3n"}, "ALERT_WEBHOOK_SECRET is required"),
        ({"alert_webhook_url": "ftp://hooks.example/tok3n", "alert_webhook_secret": "k"}, "http:// or https://"),
    ],
)
def test_a_webhook_url_needs_a_secret_and_http_and_the_error_never_quotes_it(values, message):
    with pytest.raises(ValidationError) as caught:
        make_settings(**values)
    described = describe_invalid_settings(caught.value)
    assert message in described and "tok3n" not in described


def test_the_secrets_a_body_is_cleaned_of_include_the_keys_and_the_service_passwords():
    settings = make_settings(
        alert_webhook_url="https://hooks.example/T0/B0/slack-token",
        alert_webhook_secret="whsec-123456",
        openai_api_key="sk-live-abcdef",
        openai_base_url="https://api.openai.com/v1",
        database_url="postgresql://app:db-pass-987@db:5432/agents",
        redis_url="redis://:redis-pass-654@cache:6379/0",
        tool_secrets={"CRM": "crm-token-321"},
    )
    found = secret_values(settings)
    for secret in ("whsec-123456", "sk-live-abcdef", "db-pass-987", "redis-pass-654", "crm-token-321"):
        assert secret in found
    assert "https://hooks.example/T0/B0/slack-token" in found
    assert isinstance(build_notifier(settings), WebhookSender)
