"""Notifications: the signed webhook the service POSTs its critical events to (`agent_service.notifications`)."""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator


class NotificationSettings(BaseModel):
    """Notifications without Prometheus: a JSON event POSTed for each critical event (a dead letter, a breaker
    opened or closed, a spend cap reached, pause and resume, the database unreachable, a worker that cannot
    start), signed, sent off the tasks' path, repeats collapsed (docs/operations.md, "Notifications")."""

    # A secret: a Slack incoming webhook's URL is its credential.
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="http(s) URL to POST events to (unset: no notifications); its host passes the tools' address "
        "check (loopback and private addresses only with TOOL_ALLOW_PRIVATE_ADDRESSES)",
    )
    alert_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the X-Agent-Service-Signature header; required with ALERT_WEBHOOK_URL"
    )
    alert_webhook_collapse_seconds: float = Field(
        300.0, ge=0, description="repeats of one event (same type and labels) within this long are sent as one"
    )
    alert_webhook_buffer: int = Field(
        100, ge=1, description="events waiting to be sent per process; beyond it new ones are dropped (counted)"
    )
    alert_webhook_max_attempts: int = Field(5, ge=1, description="deliveries tried per event before it is dropped")
    alert_webhook_retry_seconds: float = Field(
        2.0, gt=0, description="the wait before the second delivery, doubled before each later one"
    )
    alert_webhook_timeout_seconds: float = Field(5.0, gt=0, description="one delivery's whole time")

    @model_validator(mode="after")
    def _webhook_is_signed_http(self) -> Self:
        if self.alert_webhook_url is None:
            return self
        if urlsplit(self.alert_webhook_url.get_secret_value()).scheme not in ("http", "https"):
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
        if self.alert_webhook_secret is None or not self.alert_webhook_secret.get_secret_value():
            raise ValueError("ALERT_WEBHOOK_SECRET is required with ALERT_WEBHOOK_URL: every event is signed")
        return self
