"""The server's own enforced rate limits, like OpenAI's: requests and tokens per minute, per model or across
all models (``--rpm``/``--tpm``, ``--rate-limits``, or ``rate_limits`` in ``/control/config``). A request over
a limit gets a 429 with ``Retry-After`` and ``x-ratelimit-*`` headers, and ``/control/stats`` counts those
429s apart. Each limit is a leaky bucket holding ``rate_burst_seconds`` of its rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_service.devtools.llm_server.errors import ApiError, error_response
from agent_service.devtools.llm_server.validation import json_number, reject_unknown_fields

ALL_MODELS = "*"  # the rate_limits entry shared by every model's requests together
LIMIT_KINDS = {"rpm": "requests", "tpm": "tokens"}
DEFAULT_RATE_BURST_SECONDS = 1.0


@dataclass
class Bucket:
    """A leaky bucket: its level drains at `per_minute / 60` units a second and holds at most
    `burst_seconds` of that rate; a charge that does not fit is refused, with how long until it would.
    A charge larger than the whole bucket fits once the bucket is empty (else it never would)."""

    per_minute: float
    burst_seconds: float
    level: float = 0.0
    at: float = 0.0

    @property
    def capacity(self) -> float:
        return self.per_minute * self.burst_seconds / 60

    def drained(self, now: float) -> float:
        return max(0.0, self.level - (now - self.at) * self.per_minute / 60)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits (0: it fits now)."""
        over = self.drained(now) + min(amount, self.capacity) - self.capacity
        return max(0.0, over * 60 / self.per_minute)

    def charge(self, amount: float, now: float) -> None:
        self.level, self.at = self.drained(now) + amount, now

    def headers(self, name: str, now: float) -> dict[str, str]:
        level = self.drained(now)
        return {
            f"x-ratelimit-limit-{name}": f"{self.per_minute:g}",
            f"x-ratelimit-remaining-{name}": f"{max(0, int(self.capacity - level))}",
            f"x-ratelimit-reset-{name}": f"{level * 60 / self.per_minute:.3f}s",
        }


def rate_headers(charges: list[tuple[str, str, float, int]], buckets: list[Bucket], now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers: of the model's own limit where it has one, else of the shared one."""
    headers: dict[str, str] = {}
    for (_, kind, _, _), bucket in reversed(list(zip(charges, buckets, strict=True))):
        headers.update(bucket.headers(LIMIT_KINDS[kind], now))
    return headers


@dataclass(frozen=True)
class RateLimited:
    """A request refused by a rate limit: which one, and when to come back."""

    model: str
    kind: str  # "rpm" or "tpm"
    per_minute: float
    retry_after: float
    headers: dict[str, str]


@dataclass
class RateLimiter:
    """The limits in force (model or "*" -> {"rpm": n, "tpm": n}), their buckets, and the requests refused."""

    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    burst_seconds: float = DEFAULT_RATE_BURST_SECONDS
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    refused: int = 0

    def configure(self, limits: dict[str, dict[str, float]], *, burst_seconds: float) -> None:
        """New limits start from empty buckets."""
        self.limits, self.burst_seconds = limits, burst_seconds
        self.buckets.clear()

    def admit(self, model: str, tokens: Callable[[], int]) -> RateLimited | dict[str, str]:
        """Charge one request of `model` and its `tokens` to every limit that applies, or to none when one is
        over: then the refusal. Returns the x-ratelimit headers of the model's own limits when admitted."""
        if not self.limits:
            return {}
        now = time.monotonic()
        charges = [
            (subject, kind, per_minute, 1 if kind == "rpm" else tokens())
            for subject in (model, ALL_MODELS)
            for kind, per_minute in self.limits.get(subject, {}).items()
        ]
        buckets = [self.bucket(subject, kind, per_minute) for subject, kind, per_minute, _ in charges]
        for (subject, kind, per_minute, amount), bucket in zip(charges, buckets, strict=True):
            wait = bucket.wait_for(amount, now)
            if wait > 0:
                self.refused += 1
                return RateLimited(subject, kind, per_minute, wait, rate_headers(charges, buckets, now))
        for (_, _, _, amount), bucket in zip(charges, buckets, strict=True):
            bucket.charge(amount, now)
        return rate_headers(charges, buckets, now)

    def bucket(self, subject: str, kind: str, per_minute: float) -> Bucket:
        bucket = self.buckets.get((subject, kind))
        if bucket is None or bucket.per_minute != per_minute:
            bucket = self.buckets[(subject, kind)] = Bucket(per_minute, self.burst_seconds)
        return bucket


def parse_rate_limits(value: Any) -> dict[str, dict[str, float]]:
    """{"gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "*": {"rpm": 1000}}: per model, and "*" for all together."""
    if not isinstance(value, dict) or not all(isinstance(limits, dict) for limits in value.values()):
        raise ApiError('\'rate_limits\' must map a model (or "*") to {"rpm": n, "tpm": n}', param="rate_limits")
    for limits in value.values():
        reject_unknown_fields(limits, frozenset(LIMIT_KINDS))
        for kind, per_minute in limits.items():
            if json_number(per_minute, kind) == 0:
                raise ApiError(f"'{kind}' must be above 0", param=kind)
    return {model: {kind: float(n) for kind, n in limits.items()} for model, limits in value.items()}


def rate_limited_error(refusal: RateLimited) -> web.Response:
    what = LIMIT_KINDS[refusal.kind]
    scope = "all models" if refusal.model == ALL_MODELS else refusal.model
    message = (
        f"Rate limit reached for {scope} on {what} per minute: Limit {refusal.per_minute:g}. "
        f"Please try again in {refusal.retry_after:.3f}s (offline mock)."
    )
    headers = {
        **refusal.headers,
        "Retry-After": str(max(1, math.ceil(refusal.retry_after))),
        "retry-after-ms": str(math.ceil(refusal.retry_after * 1000)),
    }
    return error_response(429, message, error_type=what, code="rate_limit_exceeded", headers=headers)
