"""The sender of one process: `notify` puts an event in a bounded buffer and returns; a thread of the process
POSTs it, signed, to ALERT_WEBHOOK_URL. A slow, failing or unreachable receiver therefore costs the tasks
nothing but a buffer that fills, after which new events are dropped (and counted).

- Collapsed: an event whose type and labels were seen within ALERT_WEBHOOK_COLLAPSE_SECONDS is not sent; when
  that window ends, one summary says how many came ("and 41 more like it") and a new window starts. With
  REDIS_URL the first of each window is also claimed in Redis (SET NX with the window as expiry), so the
  processes and hosts of a deployment send it once between them; each process sends its own summary.
- Retried: a transport error, a timeout, a 5xx, 408, 425 or 429 is tried again after
  ALERT_WEBHOOK_RETRY_SECONDS, doubled each time, up to ALERT_WEBHOOK_MAX_ATTEMPTS; any other 4xx is final.
- Checked: every delivery resolves the URL's host and connects only to an address the tools' check allows
  (`tools.addresses`; loopback and private addresses only with TOOL_ALLOW_PRIVATE_ADDRESSES), and follows no
  redirect.
- Counted: `agent_service_notifications_total{event, result}` (`Result`).

Each process has its own sender (Celery's prefork children, the CLI): after a fork the child starts empty, with
no thread until its first event. docs/decisions.md, "Notifications from every process", says why.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from redis import Redis

from agent_service.config import Settings
from agent_service.errors import AddressRefusedError
from agent_service.monitoring import NOTIFICATIONS
from agent_service.notifications.events import Event, payload
from agent_service.notifications.signing import SIGNATURE_HEADER, signature_header
from agent_service.tools.addresses import IPAddress, Resolver, checked_addresses, system_resolver
from agent_service.tools.targets import request_to_address, tls_context

logger = logging.getLogger("agent_service.notifications")

COLLAPSE_KEY_PREFIX = "agent_service:notifications:"
REDACTED = "[redacted]"
# Worth another attempt: the receiver is overloaded or briefly away; any other 4xx refuses the event for good.
_RETRY_STATUSES = frozenset({408, 425, 429})
# Distinct events tracked for collapsing, per buffered event: a bound on memory when labels are many.
_WINDOWS_PER_SLOT = 10
_SHORTEST_REDACTED = 6  # shorter secrets would blank ordinary words


class Result(enum.StrEnum):
    """What became of one event (the `result` label of agent_service_notifications_total)."""

    SENT = "sent"
    COLLAPSED = "collapsed"
    FAILED = "failed"
    REFUSED = "refused"
    DROPPED = "dropped"


class Notifier(Protocol):
    """Where a process reports its events."""

    def notify(self, event: Event) -> None:
        """Queue `event` to be sent; returns at once and never raises."""

    def close(self, *, timeout: float) -> bool:
        """Send what is queued, summaries of collapsed repeats too, for at most `timeout` seconds; returns
        whether everything was sent."""


class _NoNotifications:
    """ALERT_WEBHOOK_URL unset: nothing is sent, and nothing costs anything."""

    def notify(self, event: Event) -> None:
        """Nowhere to send it."""

    def close(self, *, timeout: float) -> bool:
        return True


NO_NOTIFICATIONS: Notifier = _NoNotifications()


@dataclass(order=True)
class _Delivery:
    """One event waiting in the buffer, ordered by when it is due (then by arrival)."""

    due: float
    number: int
    event: Event = field(compare=False)
    at: float = field(compare=False)  # when it happened (Unix time)
    repeats: int = field(compare=False, default=0)  # > 0: a summary of that many collapsed repeats
    attempt: int = field(compare=False, default=1)


@dataclass
class _Window:
    """Repeats of one event since `opened` (monotonic); the first of them is the summary's example."""

    opened: float
    repeats: int = 0
    example: Event | None = None
    at: float = 0.0


class WebhookSender:
    """Sends this process's events to ALERT_WEBHOOK_URL; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Callable[[], Redis] | None = None,
        resolver: Resolver = system_resolver,
        host: str | None = None,
    ) -> None:
        if settings.alert_webhook_url is None or settings.alert_webhook_secret is None:
            raise ValueError("WebhookSender needs ALERT_WEBHOOK_URL and ALERT_WEBHOOK_SECRET")
        self._url = httpx.URL(settings.alert_webhook_url.get_secret_value())
        self._key = settings.alert_webhook_secret.get_secret_value()
        self._settings, self._redis, self._resolver = settings, redis, resolver
        self._host = host or socket.gethostname()
        self._collapse = settings.alert_webhook_collapse_seconds
        self._secrets = secret_values(settings)
        self._start()
        os.register_at_fork(after_in_child=partial(_start_in_child, weakref.ref(self)))

    def _start(self) -> None:
        """An empty sender with no thread yet: in a forked child, the parent's buffer and thread stay the parent's."""
        self._lock = threading.Condition()
        self._buffer: list[_Delivery] = []
        self._windows: dict[str, _Window] = {}
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None
        self._sending = 0
        self._closing = False

    def notify(self, event: Event) -> None:
        """Queue `event` (or count it as a repeat of one sent within the window); returns at once, never raises."""
        try:
            result = self._queue(event)
        except Exception:
            logger.exception("notification %s not queued", event.type.value)
            return
        if result is not None:
            _count(event, result)

    def close(self, *, timeout: float) -> bool:
        """Send what is buffered and the open windows' summaries, for at most `timeout` seconds; returns
        whether all of it was sent. The sender stays usable (a process that goes on notifies as before)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = True  # the windows end now: their summaries are sent at once
            self._lock.notify_all()
            try:
                while self._buffer or self._sending or any(window.repeats for window in self._windows.values()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._lock.wait(left)
                return True
            finally:
                self._closing = False

    def _queue(self, event: Event) -> Result | None:
        """Buffer `event`; returns its result when it is not to be sent (collapsed, dropped)."""
        now, key = time.monotonic(), event.key(self._host)
        with self._lock:
            window = self._windows.get(key) if self._collapse else None
            if window is not None:
                window.repeats += 1
                if window.example is None:
                    window.example, window.at = event, time.time()
                return Result.COLLAPSED
            if self._collapse and len(self._windows) >= _WINDOWS_PER_SLOT * self._settings.alert_webhook_buffer:
                return Result.DROPPED
            if not self._push(_Delivery(now, next(self._numbers), event, time.time())):
                return Result.DROPPED
            if self._collapse:
                self._windows[key] = _Window(now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
                self._thread.start()
            return None

    def _push(self, delivery: _Delivery) -> bool:
        """Add `delivery` to the buffer unless it is full (the caller holds the lock)."""
        if delivery.attempt == 1 and len(self._buffer) >= self._settings.alert_webhook_buffer:
            return False
        heapq.heappush(self._buffer, delivery)
        self._lock.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                delivery = self._next()
                self._sending += 1
            try:
                self._deliver(delivery)
            except Exception:
                logger.exception("notification %s: unexpected error", delivery.event.type.value)
            finally:
                with self._lock:
                    self._sending -= 1
                    self._lock.notify_all()

    def _next(self) -> _Delivery:
        """Wait for the next delivery that is due, summarising each window as it ends (the lock is held)."""
        while True:
            now = time.monotonic()
            self._end_windows(now)
            if self._buffer and self._buffer[0].due <= now:
                return heapq.heappop(self._buffer)
            wakes = [self._buffer[0].due] if self._buffer else []
            wakes += [window.opened + self._collapse for window in self._windows.values()]
            self._lock.wait(min(wakes) - now if wakes else None)

    def _end_windows(self, now: float) -> None:
        """Each window that has ended (all of them while closing) sends its summary, if it had repeats, and
        starts again; one without repeats is forgotten."""
        for key, window in list(self._windows.items()):
            if not self._closing and now < window.opened + self._collapse:
                continue
            if window.example is None:
                del self._windows[key]
                continue
            summary = _Delivery(now, next(self._numbers), window.example, window.at, repeats=window.repeats)
            if not self._push(summary):
                _count(window.example, Result.DROPPED)
            self._windows[key] = _Window(now)

    def _deliver(self, delivery: _Delivery) -> None:
        event = delivery.event
        if delivery.attempt == 1 and not delivery.repeats and self._sent_elsewhere(event):
            _count(event, Result.COLLAPSED)
            return
        body = self._body(delivery)
        try:
            status: int | None = asyncio.run(self._post(body))
            problem = f"HTTP {status}"
        except AddressRefusedError as exc:
            logger.error("notification %s not sent: ALERT_WEBHOOK_URL %s", event.type.value, exc)
            _count(event, Result.REFUSED)
            return
        except (httpx.HTTPError, OSError) as exc:  # TimeoutError is an OSError
            status, problem = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status is not None and 200 <= status < 300:
            _count(event, Result.SENT)
            return
        retry = status is None or status >= 500 or status in _RETRY_STATUSES
        if not retry or delivery.attempt >= self._settings.alert_webhook_max_attempts:
            logger.warning(
                "notification %s dropped after %d attempt(s) to %s: %s",
                event.type.value,
                delivery.attempt,
                self._where(),
                problem,
            )
            _count(event, Result.FAILED)
            return
        wait = self._settings.alert_webhook_retry_seconds * 2 ** (delivery.attempt - 1)
        with self._lock:
            self._push(replace(delivery, due=time.monotonic() + wait, attempt=delivery.attempt + 1))

    def _sent_elsewhere(self, event: Event) -> bool:
        """Whether another process already sent this event within the window (claimed in Redis). Redis out
        of reach: not known, so it is sent (twice is better than never)."""
        if self._redis is None or not self._collapse:
            return False
        key = COLLAPSE_KEY_PREFIX + hashlib.sha256(event.key(self._host).encode()).hexdigest()
        try:
            claimed = self._redis().set(key, f"{self._host}:{os.getpid()}", nx=True, px=int(self._collapse * 1000))
        except Exception as exc:
            logger.warning("notifications: cannot collapse across processes (%s); sending", exc)
            return False
        return not claimed

    def _body(self, delivery: _Delivery) -> bytes:
        content = payload(
            delivery.event,
            host=self._host,
            pid=os.getpid(),
            at=delivery.at,
            repeats=delivery.repeats,
            window_seconds=self._collapse,
        )
        text = json.dumps(content)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED).replace(json.dumps(secret)[1:-1], REDACTED)
        return text.encode()

    async def _post(self, body: bytes) -> int:
        """POST `body` to the URL, to the first checked address that accepts a connection; its status.
        Raises: AddressRefusedError, httpx.HTTPError, TimeoutError."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "agent-service",
            SIGNATURE_HEADER: signature_header(body, secret=self._key, timestamp=int(time.time())),
        }
        url, timeout = self._url, self._settings.alert_webhook_timeout_seconds
        async with asyncio.timeout(timeout):
            *others, last = await checked_addresses(
                url.raw_host.decode("ascii").lower(),
                url.port or (443 if url.scheme == "https" else 80),
                resolver=self._resolver,
                allow_private=self._settings.tool_allow_private_addresses,
            )
            async with httpx.AsyncClient(verify=tls_context(), trust_env=False, timeout=timeout) as client:
                for address in others:
                    try:
                        return await _status(client, url, address, headers=headers, body=body)
                    except httpx.ConnectError:
                        continue  # the next checked address
                return await _status(client, url, last, headers=headers, body=body)

    def _where(self) -> str:
        """The receiver's scheme and host for a log line (its path may be a credential, as Slack's is)."""
        return f"{self._url.scheme}://{self._url.host}"


async def _status(
    client: httpx.AsyncClient, url: httpx.URL, address: IPAddress, *, headers: dict[str, str], body: bytes
) -> int:
    """The status the receiver at `address` answers `body` with (its reply's body is never read)."""
    request = request_to_address(client, "POST", url, address, headers=headers, content=body)
    response = await client.send(request, stream=True)
    await response.aclose()
    return response.status_code


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold (each SecretStr, the passwords in the service URLs), longest first."""
    found = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        for item in value.values() if isinstance(value, dict) else (value,):
            if isinstance(item, SecretStr):
                found.append(item.get_secret_value())
    for url in (settings.database_url, settings.broker_url, settings.result_backend):
        found.append(urlsplit(url).password or "")
    return sorted({secret for secret in found if len(secret) >= _SHORTEST_REDACTED}, key=len, reverse=True)


def _start_in_child(sender: weakref.ref[WebhookSender]) -> None:
    alive = sender()
    if alive is not None:
        alive._start()


def _count(event: Event, result: Result) -> None:
    NOTIFICATIONS.labels(event.type.value, result.value).inc()
