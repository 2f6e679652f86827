"""Who is asking: the API key a request carries (`Authorization: Bearer KEY`) names its tenant, and each key may
make API_REQUESTS_PER_MINUTE requests a minute. The count is shared through Redis by every API process (a fixed
one-minute window per key); without REDIS_URL each process counts for itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis, RedisError

from agent_service.database import session_scope
from agent_service.http.problems import ProblemError
from agent_service.services import Services
from agent_service.store.api_keys import key_hash, tenant_of

_WINDOW_SECONDS = 60
_RATE_PREFIX = "agent_service:api_rate:"
_bearer = HTTPBearer(auto_error=False, description="an API key: `python cli.py api-keys create --tenant T`")


class RequestRate:
    """Counts each key's requests per minute; `admit` says how long to wait when it has had its share."""

    def __init__(self, per_minute: int, *, redis: Callable[[], Redis] | None) -> None:
        self._limit, self._redis = per_minute, redis
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """Count a request of `key` (its hash); None when it may go on, else the seconds until it may."""
        now = time.time()
        window = int(now // _WINDOW_SECONDS)
        count = self._count(key, window)
        return None if count <= self._limit else max(1, int((window + 1) * _WINDOW_SECONDS - now) + 1)

    def _count(self, key: str, window: int) -> int:
        if self._redis is not None:
            try:
                return self._count_in_redis(self._redis(), key, window)
            except RedisError:
                pass  # Redis out of reach: this process's own count keeps the limit meanwhile
        with self._lock:
            self._counts = {at: count for at, count in self._counts.items() if at[1] >= window}
            self._counts[key, window] = self._counts.get((key, window), 0) + 1
            return self._counts[key, window]

    @staticmethod
    def _count_in_redis(redis: Redis, key: str, window: int) -> int:
        name = f"{_RATE_PREFIX}{key[:32]}:{window}"
        pipe = redis.pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, _WINDOW_SECONDS * 2)
        count, _ = pipe.execute()
        return int(count)


def tenant(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant of the request's key. Raises: ProblemError 401 (no key, an unknown or revoked one), 429 (the
    key's requests this minute are spent)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorised("an API key is required: Authorization: Bearer KEY")
    services: Services = request.app.state.services
    with session_scope(services.session_factory) as session:
        found = tenant_of(session, credentials.credentials)
    if found is None:
        raise _unauthorised("the API key is unknown or revoked")
    wait = request.app.state.rate.admit(key_hash(credentials.credentials))
    if wait is not None:
        raise ProblemError(429, "this API key's requests per minute are spent", headers={"Retry-After": str(wait)})
    return found


Tenant = Annotated[str, Depends(tenant)]


def _unauthorised(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})
