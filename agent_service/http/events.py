"""`GET /v1/tasks/{id}/events`: a task's progress as Server-Sent Events, from `live.follow.follow_task` (what
already happened, then each event and token as it comes, until its `ended` event). Each event's `id` is its
place in the task's stream: a client that reconnects sends the last one back as `Last-Event-ID` (browsers'
`EventSource` does so itself) and resumes right after it, losing and repeating nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from agent_service.database import session_scope
from agent_service.http import follow_tokens
from agent_service.http.keys import Caller, admitted, bearer, caller, unauthorised
from agent_service.http.problems import ProblemError, problem_responses
from agent_service.http.schemas import FollowToken
from agent_service.http.tasks import owned_task
from agent_service.live.follow import follow_task
from agent_service.services import Services
from agent_service.store.api_keys import unrevoked_key
from agent_service.submission.follow import FollowedTask

router = APIRouter(prefix="/v1", responses=problem_responses(401, 422, 429))
MEDIA_TYPE = "text/event-stream"
_STREAM = {MEDIA_TYPE: {"schema": {"type": "string"}}}
_EVENTS: dict[int | str, dict[str, Any]] = {200: {"description": "the task's events", "content": _STREAM}}


@router.post(
    "/tasks/{task_id}/events/token",
    response_model=FollowToken,
    responses=problem_responses(404),
)
def follow_token(request: Request, found: Annotated[Caller, Depends(caller)], task_id: str) -> dict[str, Any]:
    """A token for `GET /v1/tasks/{id}/events?token=...`, for a page whose `EventSource` cannot send the key:
    it follows this task alone, for 15 minutes."""
    parsed = _owned(request, task_id, tenant=found.tenant)
    token, expires = follow_tokens.mint(found, parsed)
    return {"token": token, "expires_at": datetime.fromtimestamp(expires, UTC)}


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={**_EVENTS, **problem_responses(404, 503)},
)
def task_events(
    request: Request,
    task_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Query(max_length=200, description="a follow token, instead of the key")] = None,
    last_event_id: Annotated[str | None, Header(max_length=100, description="resume after this event")] = None,
) -> StreamingResponse:
    """The task's events until it ends: `started`, `token`, `step`, `tool_call`, `tool_result`,
    `awaiting_approval`, `retrying`, `deferred`, and last `ended`, each with its JSON `data`. With the key, or
    with a follow token (`POST /v1/tasks/{id}/events/token`)."""
    services: Services = request.app.state.services
    if credentials is None and token is not None:
        found = _token_caller(request, token)
        parsed = _owned(request, task_id, tenant=found.tenant)
        if not follow_tokens.is_valid(token, key_hash=found.key_hash, task_id=parsed):
            raise unauthorised("the follow token is not valid for this task, or has expired")
    else:
        found = caller(request, credentials)
        parsed = _owned(request, task_id, tenant=found.tenant)
    if not services.settings.redis_url:
        raise ProblemError(503, "live output needs REDIS_URL")
    events = follow_task(
        parsed,
        redis=services.redis,
        last_event_id=last_event_id or "0",
        record=FollowedTask(parsed, services=services),
    )
    return StreamingResponse(_sse(event.sse() for event in events), media_type=MEDIA_TYPE, headers=_NO_BUFFERING)


def _token_caller(request: Request, token: str) -> Caller:
    """The key a follow token names (whether it signed it for this task is checked once the task is known)."""
    key_id = follow_tokens.key_id_of(token)
    with session_scope(request.app.state.services.session_factory) as session:
        row = None if key_id is None else unrevoked_key(session, key_id)
        found = None if row is None else Caller(row.tenant, row.id, row.key_hash)
    if found is None:
        raise unauthorised("the follow token's key is unknown or revoked")
    return admitted(request, found)


def _owned(request: Request, task_id: str, *, tenant: str) -> uuid.UUID:
    with session_scope(request.app.state.services.session_factory) as session:
        return owned_task(session, task_id, tenant=tenant).id


# Proxies (nginx) hold back a response they may buffer: each event should leave at once.
_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(events: Iterator[str]) -> Iterator[str]:
    """The events, after a `retry` line telling a browser to reconnect within a second when cut off."""
    yield "retry: 1000\n\n"
    yield from events
