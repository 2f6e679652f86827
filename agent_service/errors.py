"""The service's error tree, and the one place that maps third-party errors onto it.

AgentServiceError
├── ConfigurationError    the settings, or the database they name, cannot be used as they are
├── TaskValidationError   bad input to create_agent_task; nothing was written
├── ToolDefinitionError   an agent's HTTP tools (or its allowed hosts) are not valid; the agent is refused
├── TaskNotFoundError     no task row with that id
├── ApprovalError         a decision on a task that awaits no approval, or whose approval expired
├── BrokerUnavailableError the row is saved as pending but could not be queued
├── AddressRefusedError   an outbound call's host does not resolve, or to an address it may not reach
├── RetryableError        transient: try again later, after `delay` seconds if given
└── PermanentError        retrying cannot help: fail the task now
    ├── ContextLengthExceededError the task does not fit the model's context (the model's limit, not the provider's)
    ├── ContentFilteredError       the provider's content filter refused the prompt or cut the reply
    ├── InvalidOutputError         the reply is not the structured output the task asked for (re-asked once)
    └── CallCancelledError         the task was cancelled while its LLM call ran, and the call was aborted

A failed LLM call that is the provider's doing rather than the task's carries a `ProviderFault` (the
circuit breaker counts these, see `admission.breaker`).
"""

from __future__ import annotations

import enum
import json
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    import openai

QUOTA_ERROR_CODE = "insufficient_quota"
CONTEXT_LENGTH_CODE = "context_length_exceeded"
CONTENT_FILTER_CODE = "content_filter"


class ProviderFault(str, enum.Enum):
    """How the LLM provider, not the task, made a call fail."""

    UNAVAILABLE = "unavailable"  # 5xx, 408/409, timeouts, lost connections, malformed replies
    RATE_LIMITED = "rate_limited"  # 429
    DENIED = "denied"  # 401, 403, quota exhausted: no call can succeed until a person acts


class AgentServiceError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigurationError(AgentServiceError):
    """The settings, or what they point at, cannot be used as they are; a person must change something."""


class TaskValidationError(AgentServiceError, ValueError):
    """The task input is invalid; nothing was written or queued."""


class ToolDefinitionError(AgentServiceError, ValueError):
    """An agent's tool definitions or allowed hosts are invalid; each problem names its tool and field."""


class TaskNotFoundError(AgentServiceError, LookupError):
    """No task row has the given id."""


class ApprovalError(AgentServiceError, ValueError):
    """An approval or rejection of a task that awaits none, or whose approval expired; nothing was changed."""


class BrokerUnavailableError(AgentServiceError):
    """The task row is saved but the broker refused the message: a pending row is re-queued by the sweeper, a
    waiting one (fair-share dispatch) published by the dispatchers."""


class AddressRefusedError(AgentServiceError):
    """An outbound call (a tool's, a notification's) was not sent: its host does not resolve, or resolves to an
    address it may not reach (`tools.addresses`); the message says which."""


class RetryableError(AgentServiceError):
    """A transient failure: the attempt may succeed later, after `delay` seconds when the peer said so."""

    def __init__(self, message: str, *, delay: float | None = None, fault: ProviderFault | None = None) -> None:
        super().__init__(message)
        self.delay = delay
        self.fault = fault


class CallNotSentError(RetryableError):
    """The LLM process did not send a call it was given (the service was paused, or the call left too late
    for its rate-limit slot and no new one came in time): nothing was paid, and the task is deferred with its
    attempt given back."""


class PermanentError(AgentServiceError):
    """A failure that retrying cannot fix: the task fails at once with this message."""

    def __init__(self, message: str, *, fault: ProviderFault | None = None) -> None:
        super().__init__(message)
        self.fault = fault


class ContextLengthExceededError(PermanentError):
    """The prompt and its max_tokens exceed the model's context window; the same request fails again."""


class ContentFilteredError(PermanentError):
    """The provider's content filter refused the prompt, or stopped the reply (finish_reason content_filter)."""


class InvalidOutputError(PermanentError):
    """The model's reply is not the structured output its task asked for (JSON, say); it is re-asked once."""


class CallCancelledError(PermanentError):
    """The task was cancelled while its LLM call ran, and the call was aborted."""


def validation_problems(exc: ValidationError) -> str:
    """Each problem pydantic found, as `field.path: message`, in one line."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors())


def item_error(message: str, *, index: int, count: int) -> TaskValidationError:
    """The error for item `index` of a submission of `count` items (a single item needs no number)."""
    return TaskValidationError(f"item {index}: {message}" if count > 1 else message)


def classify(exc: BaseException) -> RetryableError | PermanentError:
    """Map any exception raised while running a task onto RetryableError or PermanentError."""
    if isinstance(exc, (RetryableError, PermanentError)):
        return exc
    # The worker imports no LLM client and the LLM process no database or Celery code (tens of MB each),
    # so each library is looked up only if its process loaded it: an error can only come from one that did.
    openai, billiard_exc, redis_exc = map(sys.modules.get, ("openai", "billiard.exceptions", "redis.exceptions"))
    if openai and isinstance(exc, openai.APIError):
        return _classify_openai(exc, openai)
    if database_unreachable(exc):
        return RetryableError(f"database unavailable: {_first_line(exc)}")
    if redis_exc and isinstance(exc, redis_exc.RedisError):
        # Down, failing over (READONLY) or out of memory: the shared state is out of reach for now.
        return RetryableError(f"Redis unavailable: {_first_line(exc)}")
    if isinstance(exc, json.JSONDecodeError):
        # The openai client lets a reply that is not JSON escape as a bare JSONDecodeError.
        return RetryableError(f"LLM returned a malformed reply: {_first_line(exc)}", fault=ProviderFault.UNAVAILABLE)
    if billiard_exc and isinstance(exc, billiard_exc.SoftTimeLimitExceeded):
        return RetryableError("task exceeded its soft time limit")
    if isinstance(exc, ValidationError):
        return PermanentError(f"invalid configuration: {_first_line(exc)}")
    if isinstance(exc, TimeoutError):
        return RetryableError(f"timed out: {exc}")
    return PermanentError(f"{type(exc).__name__}: {_first_line(exc)}")


def _classify_openai(exc: openai.APIError, openai: ModuleType) -> RetryableError | PermanentError:
    unavailable = ProviderFault.UNAVAILABLE
    if isinstance(exc, openai.APITimeoutError):
        return RetryableError("LLM request timed out", fault=unavailable)
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"LLM connection failed: {_first_line(exc)}", fault=unavailable)
    if isinstance(exc, openai.RateLimitError):
        if exc.code == QUOTA_ERROR_CODE or getattr(exc, "type", None) == QUOTA_ERROR_CODE:
            message = f"LLM quota exhausted (429 {QUOTA_ERROR_CODE}): {exc.message}"
            return PermanentError(message, fault=ProviderFault.DENIED)
        message = f"LLM rate limited (429): {exc.message}"
        return RetryableError(message, delay=_retry_after(exc), fault=ProviderFault.RATE_LIMITED)
    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc)
    # APIResponseValidationError and friends: the reply was not a valid completion.
    return RetryableError(f"LLM returned a malformed reply: {_first_line(exc)}", fault=unavailable)


def _classify_status(exc: openai.APIStatusError) -> RetryableError | PermanentError:
    status = exc.status_code
    if exc.code == CONTEXT_LENGTH_CODE:
        return ContextLengthExceededError(
            f"the task is too long for the model's context ({status} {exc.code}): {exc.message}"
        )
    if exc.code == CONTENT_FILTER_CODE:
        return ContentFilteredError(
            f"the provider's content filter refused the task ({status} {exc.code}): {exc.message}"
        )
    message = f"LLM request failed ({status}): {exc.message}"
    if status in (408, 409) or status >= 500:
        return RetryableError(message, delay=_retry_after(exc), fault=ProviderFault.UNAVAILABLE)
    # Any other 4xx is the request's own fault (bad input, too long, filtered), except a refused key.
    return PermanentError(message, fault=ProviderFault.DENIED if status in (401, 403) else None)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds the peer asked us to wait (Retry-After or retry-after-ms), if it said."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach (down, restarting, a connection lost), as opposed to a
    query it refused."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")  # loaded only in a process that uses the database
    if sqlalchemy_exc is None or not isinstance(exc, sqlalchemy_exc.DBAPIError):
        return False
    return isinstance(exc, sqlalchemy_exc.OperationalError) or bool(exc.connection_invalidated)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
