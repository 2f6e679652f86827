"""The signature of a notification, as Stripe signs its webhooks: header `X-Agent-Service-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed with ALERT_WEBHOOK_SECRET>`. The timestamp is
covered by the signature, so a receiver that refuses an old `t` refuses a replayed request; docs/operations.md
shows a receiver's check in a few lines of Python."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Agent-Service-Signature"
# What a receiver should accept: a request signed at most this long ago (or ahead, for clock skew).
TOLERANCE_SECONDS = 300


def signature_header(body: bytes, *, secret: str, timestamp: int) -> str:
    """The header's value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},v1={_digest(body, secret=secret, timestamp=timestamp)}"


def verify(body: bytes, header: str, *, secret: str, now: float, tolerance: float = TOLERANCE_SECONDS) -> bool:
    """Whether `header` signs `body` with `secret`, at a time within `tolerance` seconds of `now`."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = _digest(body, secret=secret, timestamp=timestamp)
    return abs(now - timestamp) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


def _digest(body: bytes, *, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
