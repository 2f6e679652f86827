"""Notifications without Prometheus: the service POSTs a signed JSON event to ALERT_WEBHOOK_URL for each
critical event, from a background thread of each process, never on a task's path.

events.py   the vocabulary (event types, severities) and the payload a receiver gets
signing.py  the signature header (HMAC-SHA256 of a timestamp and the body) and its check
sender.py   the per-process sender: bounded buffer, repeats collapsed, bounded retries, counted outcomes

`build_notifier` gives the sender the settings ask for, or one that does nothing; docs/operations.md,
"Notifications", is the receiver's side.
"""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from agent_service.config import Settings
from agent_service.notifications.events import Event, EventType, Severity
from agent_service.notifications.sender import NO_NOTIFICATIONS, Notifier, WebhookSender
from agent_service.tools.addresses import Resolver, system_resolver

__all__ = ["NO_NOTIFICATIONS", "Event", "EventType", "Notifier", "Severity", "build_notifier"]


def build_notifier(
    settings: Settings, *, redis: Callable[[], Redis] | None = None, resolver: Resolver = system_resolver
) -> Notifier:
    """A sender to ALERT_WEBHOOK_URL (repeats collapsed across processes through `redis`, when given), or, with
    no URL set, a notifier that does nothing."""
    if settings.alert_webhook_url is None:
        return NO_NOTIFICATIONS
    return WebhookSender(settings, redis=redis, resolver=resolver)
