"""Who is asking: the API key a request carries (`Authorization: Bearer KEY`) names its tenant, and each key may
make API_REQUESTS_PER_MINUTE requests a minute. The count is shared through Redis by every API process (a fixed
one-minute window per key); without REDIS_URL each process counts for itself."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis, RedisError

from agent_service.database import session_scope
from agent_service.http.problems import ProblemError
from agent_service.services import Services
from agent_service.store.api_keys import find_key

_WINDOW_SECONDS = 60
_RATE_PREFIX = "agent_service:api_rate:"
bearer = HTTPBearer(auto_error=False, description="an API key: `python cli.py api-keys create --tenant T`")


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


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its key (by id, and by hash, which signs its follow tokens) and the key's tenant."""

    tenant: str
    key_id: uuid.UUID
    key_hash: str


def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    """The request's key. Raises: ProblemError 401 (no key, an unknown or revoked one), 429 (the key's requests
    this minute are spent)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorised("an API key is required: Authorization: Bearer KEY")
    with session_scope(_services(request).session_factory) as session:
        row = find_key(session, credentials.credentials)
        found = None if row is None else Caller(row.tenant, row.id, row.key_hash)
    if found is None:
        raise unauthorised("the API key is unknown or revoked")
    return admitted(request, found)


def admitted(request: Request, found: Caller) -> Caller:
    """`found`, once its key's request is counted. Raises: ProblemError 429."""
    wait = request.app.state.rate.admit(found.key_hash)
    if wait is not None:
        raise ProblemError(429, "this API key's requests per minute are spent", headers={"Retry-After": str(wait)})
    return found


def tenant(found: Annotated[Caller, Depends(caller)]) -> str:
    """The tenant of the request's key."""
    return found.tenant


Tenant = Annotated[str, Depends(tenant)]


def unauthorised(detail: str) -> ProblemError:
    """The 401 of a request without a usable key or token."""
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
