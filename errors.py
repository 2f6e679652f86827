"""The service's error tree, and the one place that maps third-party errors onto it.

AgentServiceError
├── ConfigurationError    the settings, or the database they name, cannot be used as they are
├── TaskValidationError   bad input to create_agent_task; nothing was written
├── TaskNotFoundError     no task row with that id
├── BrokerUnavailableError the row is saved as pending but could not be queued
├── RetryableError        transient: try again later, after `delay` seconds if given
└── PermanentError        retrying cannot help: fail the task now
"""

from __future__ import annotations

import json
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    import openai
    from sqlalchemy.exc import DBAPIError

QUOTA_ERROR_CODE = "insufficient_quota"


class AgentServiceError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigurationError(AgentServiceError):
    """The settings, or what they point at, cannot be used as they are; a person must change something."""


class TaskValidationError(AgentServiceError, ValueError):
    """The task input is invalid; nothing was written or queued."""


class TaskNotFoundError(AgentServiceError, LookupError):
    """No task row has the given id."""


class BrokerUnavailableError(AgentServiceError):
    """The task row is saved but the broker refused the message: a pending row is re-queued by the sweeper, a
    waiting one (fair-share dispatch) published by the dispatchers."""


class RetryableError(AgentServiceError):
    """A transient failure: the attempt may succeed later, after `delay` seconds when the peer said so."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(AgentServiceError):
    """A failure that retrying cannot fix: the task fails at once with this message."""


def item_error(message: str, *, index: int, count: int) -> TaskValidationError:
    """The error for item `index` of a submission of `count` items (a single item needs no number)."""
    return TaskValidationError(f"item {index}: {message}" if count > 1 else message)


def classify(exc: BaseException) -> RetryableError | PermanentError:
    """Map any exception raised while running a task onto RetryableError or PermanentError."""
    if isinstance(exc, (RetryableError, PermanentError)):
        return exc
    # The worker imports no LLM client and the LLM process no database or Celery code (tens of MB each),
    # so each library is looked up only if its process loaded it: an error can only come from one that did.
    openai, sqlalchemy_exc, billiard_exc = map(sys.modules.get, ("openai", "sqlalchemy.exc", "billiard.exceptions"))
    if openai and isinstance(exc, openai.APIError):
        return _classify_openai(exc, openai)
    if sqlalchemy_exc and isinstance(exc, sqlalchemy_exc.DBAPIError) and _is_disconnect(exc, sqlalchemy_exc):
        return RetryableError(f"database unavailable: {_first_line(exc)}")
    if isinstance(exc, json.JSONDecodeError):
        # The openai client lets a reply that is not JSON escape as a bare JSONDecodeError.
        return RetryableError(f"LLM returned a malformed reply: {_first_line(exc)}")
    if billiard_exc and isinstance(exc, billiard_exc.SoftTimeLimitExceeded):
        return RetryableError("task exceeded its soft time limit")
    if isinstance(exc, ValidationError):
        return PermanentError(f"invalid configuration: {_first_line(exc)}")
    if isinstance(exc, TimeoutError):
        return RetryableError(f"timed out: {exc}")
    return PermanentError(f"{type(exc).__name__}: {_first_line(exc)}")


def _classify_openai(exc: openai.APIError, openai: ModuleType) -> RetryableError | PermanentError:
    if isinstance(exc, openai.APITimeoutError):
        return RetryableError("LLM request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"LLM connection failed: {_first_line(exc)}")
    if isinstance(exc, openai.RateLimitError):
        if exc.code == QUOTA_ERROR_CODE or getattr(exc, "type", None) == QUOTA_ERROR_CODE:
            return PermanentError(f"LLM quota exhausted (429 {QUOTA_ERROR_CODE}): {exc.message}")
        return RetryableError(f"LLM rate limited (429): {exc.message}", delay=_retry_after(exc))
    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc)
    # APIResponseValidationError and friends: the reply was not a valid completion.
    return RetryableError(f"LLM returned a malformed reply: {_first_line(exc)}")


def _classify_status(exc: openai.APIStatusError) -> RetryableError | PermanentError:
    status = exc.status_code
    message = f"LLM request failed ({status}): {exc.message}"
    if status in (408, 409) or status >= 500:
        return RetryableError(message, delay=_retry_after(exc))
    return PermanentError(message)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds the peer asked us to wait (Retry-After or retry-after-ms), if it said."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _is_disconnect(exc: DBAPIError, sqlalchemy_exc: ModuleType) -> bool:
    return isinstance(exc, sqlalchemy_exc.OperationalError) or bool(exc.connection_invalidated)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
