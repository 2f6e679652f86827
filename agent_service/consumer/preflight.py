"""Before a worker starts: the connections its settings ask to encrypt must be able to.

A TLS connection that fails because of how it is configured (a CA that did not sign the server's certificate,
a certificate for another name, a server without TLS where the URL requires it) fails the same way on every
retry, so the worker stops at start with one line naming the setting, instead of retrying (Celery's broker
connection; a plain-text Redis never ends the handshake) or holding its agent tasks back
(`readiness.DatabaseGate`). A server that is down or unreachable is not this check's business: the worker
waits for it as before.

Checked: each `rediss://` URL among REDIS_URL, CELERY_BROKER_URL and CELERY_RESULT_BACKEND (their query's
`ssl_cert_reqs` and `ssl_ca_certs` are honoured by every client built from them: Celery's broker and result
backend, the shared controls, live output), and DATABASE_URL when its `sslmode` requires TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from agent_service.config import Settings

TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})
# libpq reports TLS failures in words only; these mean configuration. "SSL SYSCALL error" (a connection cut
# during the handshake) is not among them: it may pass.
_LIBPQ_TLS_FAILURES = ("SSL error:", "certificate", "does not support SSL")
# A plain-text Redis never answers a TLS handshake: it waits for a line that never comes.
REDIS_HANDSHAKE_TIMEOUT_SECONDS = 5.0
# Errors of the TLS layer that a connection cut also raises, so that may pass.
_TRANSIENT_SSL_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def tls_refusal(settings: Settings, engine: Engine) -> str | None:
    """Why this worker must not start, as one line naming the setting (passwords hidden): the first
    encrypted connection that fails for a TLS reason. None when each connects, or fails for a reason that
    may pass (the server down, unreachable)."""
    for setting, url in _tls_redis_urls(settings):
        reason = _redis_tls_failure(url)
        if reason:
            return f"{setting}: {reason} ({_hide_password(url)}); the worker stops"
    if make_url(settings.database_url).query.get("sslmode") in TLS_SSLMODES:
        reason = _database_tls_failure(engine)
        if reason:
            return f"DATABASE_URL: {reason} ({_hide_password(settings.database_url)}); the worker stops"
    return None


def _hide_password(url: str) -> str:
    """`url` as written (its query too, which names the CA file), with `***` for its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _tls_redis_urls(settings: Settings) -> Iterator[tuple[str, str]]:
    """Each distinct rediss:// URL with the setting it came from, the broker and results' own URLs only when
    they are not REDIS_URL."""
    named = (
        ("REDIS_URL", settings.redis_url),
        ("CELERY_BROKER_URL", settings.celery_broker_url),
        ("CELERY_RESULT_BACKEND", settings.celery_result_backend),
    )
    seen: set[str] = set()
    for setting, url in named:
        if url and url.startswith("rediss://") and url not in seen:
            seen.add(url)
            yield setting, url


def _redis_tls_failure(url: str) -> str | None:
    """The TLS reason a connection to `url` fails, or None (it connects, or fails for another reason)."""
    timeout = REDIS_HANDSHAKE_TIMEOUT_SECONDS
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return _tls_cause(exc)
    finally:
        client.close()
    return None


def _tls_cause(exc: BaseException) -> str | None:
    """The TLS failure in `exc`'s chain (redis-py keeps the ssl module's error as the context), if any."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TRANSIENT_SSL_ERRORS):
            return f"TLS failed: {cause}"
        if isinstance(cause, TimeoutError) and "handshake" in str(cause):
            return f"no TLS handshake within {REDIS_HANDSHAKE_TIMEOUT_SECONDS:.0f} s: does that port serve TLS?"
        cause = cause.__cause__ or cause.__context__
    return None


def _database_tls_failure(engine: Engine) -> str | None:
    """The TLS reason a connection to the database fails, in libpq's words, or None."""
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        return f"TLS failed: {reason}" if any(sign in reason for sign in _LIBPQ_TLS_FAILURES) else None
    return None
