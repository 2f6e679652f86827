"""The notification sender against a real HTTP receiver on 127.0.0.1 (`tests.webhook_receiver`): what arrives
is signed and verifies, one notification per event, repeats collapsed into one summary, a storm bounded, a
receiver that fails or is down retried a bounded number of times, a slow one costing `notify` nothing, an
address the tools' check refuses never contacted, and no secret in a body. Repeats across processes are
collapsed through Redis; `python cli.py pause` and `resume` send theirs before they exit."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from agent_service.notifications import Event, EventType, build_notifier
from agent_service.notifications.sender import WebhookSender
from agent_service.notifications.signing import SIGNATURE_HEADER, verify
from agent_service.tools.addresses import StaticResolver
from tests.integration.conftest import IDLE_REDIS
from tests.support import make_settings, run_cli
from tests.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-4b1d"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def sender_to(url: str, **overrides) -> WebhookSender:
    values = {
        "alert_webhook_url": url,
        "alert_webhook_secret": SECRET,
        "tool_allow_private_addresses": True,  # the receiver is on loopback
        "alert_webhook_retry_seconds": 0.05,
        "alert_webhook_max_attempts": 3,
        "alert_webhook_timeout_seconds": 2,
        **overrides,
    }
    notifier = build_notifier(make_settings(**values))
    assert isinstance(notifier, WebhookSender)
    return notifier


def dead_letter(agent: str = "agent-1", task: str | None = None) -> Event:
    task = task or str(uuid.uuid4())
    return Event(EventType.TASK_DEAD_LETTERED, f"task {task} failed for good", {"agent_id": agent}, {"task_id": task})


def counted(event: EventType, result: str) -> float:
    return REGISTRY.get_sample_value("agent_service_notifications_total", {"event": event.value, "result": result}) or 0


def test_a_notification_is_signed_and_the_documented_receiver_check_verifies_it(receiver):
    sender = sender_to(receiver.url)
    # When a breaker opens
    labels = {"provider": "api.openai.com", "model": "gpt-4o-mini"}
    sender.notify(Event(EventType.BREAKER_OPENED, "circuit breaker opened for gpt-4o-mini", labels))
    receiver.wait_for(lambda: len(receiver.received) == 1)
    # Then the receiver gets a Slack-compatible text and the structured fields, signed with the secret
    [delivery] = receiver.received
    event = delivery.event
    assert event["event"] == "breaker_opened" and event["severity"] == "critical"
    assert event["labels"] == labels and "circuit breaker opened for gpt-4o-mini" in event["text"]
    assert {"host", "pid", "timestamp", "repeats", "service"} <= set(event)
    header = delivery.headers[SIGNATURE_HEADER.lower()]
    assert verify(delivery.body, header, secret=SECRET, now=time.time())
    assert not verify(delivery.body + b" ", header, secret=SECRET, now=time.time())
    assert not verify(delivery.body, header, secret=SECRET, now=time.time() + 3600)  # a replay, an hour later
    # And the receiver's check shown in docs/operations.md says the same
    snippet = re.search(r"```python\n(# verify a notification.*?)```", (ROOT / "docs/operations.md").read_text(), re.S)
    assert snippet, "docs/operations.md shows a receiver's check"
    namespace: dict = {}
    exec(snippet.group(1), namespace)
    assert namespace["verified"](delivery.body, header, SECRET)
    assert not namespace["verified"](delivery.body.replace(b"critical", b"info"), header, SECRET)


def test_each_event_is_sent_once(receiver):
    sender = sender_to(receiver.url)
    events = [dead_letter(agent=f"agent-{n}") for n in range(3)]
    events.append(Event(EventType.PAUSED, "paused"))
    for event in events:
        sender.notify(event)
    assert sender.close(timeout=10)
    assert sorted(e["labels"].get("agent_id", "") for e in receiver.events()) == ["", "agent-0", "agent-1", "agent-2"]
    assert receiver.attempts == 4


def test_repeats_within_the_window_are_sent_as_one_then_one_summary(receiver):
    sender = sender_to(receiver.url, alert_webhook_collapse_seconds=1.0)
    collapsed_before = counted(EventType.TASK_DEAD_LETTERED, "collapsed")
    # When one agent's tasks fail 50 times within the window
    for _ in range(50):
        sender.notify(dead_letter(agent="flaky"))
    # Then the first is sent at once, and when the window ends one summary counts the other 49
    receiver.wait_for(lambda: len(receiver.received) == 2, timeout=20)
    first, summary = receiver.events()
    assert (first["repeats"], summary["repeats"]) == (0, 49)
    assert "and 49 more like it" in summary["text"]
    assert counted(EventType.TASK_DEAD_LETTERED, "collapsed") - collapsed_before == 49


def test_a_storm_of_1000_failures_gives_a_bounded_number_of_notifications(receiver):
    sender = sender_to(receiver.url, alert_webhook_collapse_seconds=60)
    # When 1,000 tasks of 4 agents fail, and 1,000 spend-cap refusals of one user come with them
    for n in range(1000):
        sender.notify(dead_letter(agent=f"agent-{n % 4}"))
        cap = {"scope": "user", "subject": "u1", "period": "daily"}
        sender.notify(Event(EventType.SPEND_CAP_REACHED, "user u1 daily cap of $5 reached", cap))
    # Then each distinct event is sent once, and closing (as a worker stopping) sends one summary for each
    assert sender.close(timeout=20)
    sent = receiver.events()
    assert len(sent) == 2 * 5
    assert sum(event["repeats"] for event in sent) == 2000 - 5


def test_a_failing_receiver_is_tried_a_bounded_number_of_times_then_the_event_is_dropped_and_counted(receiver):
    receiver.status = 503
    sender = sender_to(receiver.url, alert_webhook_max_attempts=3)
    failed_before = counted(EventType.RESUMED, "failed")
    sender.notify(Event(EventType.RESUMED, "resumed"))
    sender.close(timeout=10)
    assert receiver.attempts == 3
    assert counted(EventType.RESUMED, "failed") - failed_before == 1
    # A receiver that refuses the event (4xx) is not asked again
    receiver.status, receiver.attempts = 400, 0
    sender.notify(Event(EventType.RESUMED, "resumed, again"))
    sender.close(timeout=10)
    assert receiver.attempts == 1


def test_a_receiver_down_then_up_gets_the_event_on_a_retry_and_the_later_ones(receiver):
    sender = sender_to(receiver.url, alert_webhook_max_attempts=8, alert_webhook_retry_seconds=0.2)
    # Given the receiver down
    receiver.stop()
    sender.notify(Event(EventType.DATABASE_UNREACHABLE, "database not answering"))
    time.sleep(0.5)  # a retry or two meet the closed port
    # When it comes back on the same port
    receiver.start()
    sender.notify(Event(EventType.DATABASE_REACHABLE, "database answers again"))
    # Then the event it missed arrives on a later attempt, and the next one too
    receiver.wait_for(lambda: len(receiver.received) == 2)
    assert sorted(e["event"] for e in receiver.events()) == ["database_reachable", "database_unreachable"]


def test_a_slow_receiver_fills_the_buffer_and_later_events_are_dropped_not_waited_for(receiver):
    receiver.delay = 5.0
    sender = sender_to(receiver.url, alert_webhook_buffer=5, alert_webhook_collapse_seconds=0)
    dropped_before = counted(EventType.TASK_DEAD_LETTERED, "dropped")
    # When 100 distinct events come while the receiver holds the first request
    for _ in range(100):
        sender.notify(dead_letter())
    # Then notify returned 100 times before the receiver answered even once, and what the buffer could not
    # hold was dropped and counted: at most the buffer and the one in flight are kept
    assert receiver.received == []
    assert counted(EventType.TASK_DEAD_LETTERED, "dropped") - dropped_before >= 100 - 5 - 1


def test_an_address_the_tools_check_refuses_is_never_contacted(receiver):
    refused_before = counted(EventType.PAUSED, "refused")
    # Loopback without TOOL_ALLOW_PRIVATE_ADDRESSES, and the metadata address whatever the setting
    loopback = sender_to(receiver.url, tool_allow_private_addresses=False)
    resolver = StaticResolver({"hooks.test": ["169.254.169.254"]})
    metadata = WebhookSender(
        make_settings(
            alert_webhook_url="http://hooks.test/hook", alert_webhook_secret=SECRET, tool_allow_private_addresses=True
        ),
        resolver=resolver,
    )
    for sender in (loopback, metadata):
        sender.notify(Event(EventType.PAUSED, "paused"))
        sender.close(timeout=10)
    assert receiver.attempts == 0
    assert counted(EventType.PAUSED, "refused") - refused_before == 2


def test_no_secret_of_the_settings_goes_out_in_a_notification(receiver):
    key = "sk-canary-5f2e9d0c7b"
    sender = sender_to(receiver.url, openai_api_key=key, openai_base_url="https://api.openai.com/v1")
    # Even when a summary were to quote the key (the service never writes one that does)
    sender.notify(Event(EventType.WORKER_START_FAILED, f"cannot start: bad key {key}"))
    assert sender.close(timeout=10)
    [delivery] = receiver.received
    assert key.encode() not in delivery.body and SECRET.encode() not in delivery.body
    assert "[redacted]" in delivery.event["summary"]


def test_processes_sharing_redis_send_an_event_once_between_them(receiver):
    shared = redis.Redis.from_url(IDLE_REDIS)
    shared.flushdb()
    settings = {"redis_url": IDLE_REDIS, "alert_webhook_collapse_seconds": 30}
    # Two processes' senders (two workers, or two prefork children), each meeting the same cap
    senders = [
        build_notifier(
            make_settings(
                alert_webhook_url=receiver.url,
                alert_webhook_secret=SECRET,
                tool_allow_private_addresses=True,
                **settings,
            ),
            redis=lambda: shared,
        )
        for _ in range(2)
    ]
    cap = {"scope": "agent", "subject": "a1", "period": "monthly"}
    for sender in senders:
        sender.notify(Event(EventType.SPEND_CAP_REACHED, "agent a1 monthly cap reached", cap))
        sender.close(timeout=10)
    assert len(receiver.events("spend_cap_reached")) == 1


def test_pause_and_resume_on_the_command_line_are_each_notified_once(receiver, settings):
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    configured = make_settings(
        database_url=settings.database_url,
        redis_url=IDLE_REDIS,
        alert_webhook_url=receiver.url,
        alert_webhook_secret=SECRET,
        tool_allow_private_addresses=True,
    )
    # When an operator pauses (twice: the second changes nothing), then resumes
    for command in ("pause", "pause", "resume"):
        assert run_cli(configured, command).returncode == 0
    # Then the command itself sent each change before it exited: one paused, one resumed
    assert [event["event"] for event in receiver.events()] == ["paused", "resumed"]
