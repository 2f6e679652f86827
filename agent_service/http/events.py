"""`GET /v1/tasks/{id}/events`: a task's progress as Server-Sent Events, from `live.follow.follow_task` (what
already happened, then each event and token as it comes, until its `ended` event). Each event's `id` is its
place in the task's stream: a client that reconnects sends the last one back as `Last-Event-ID` (browsers'
`EventSource` does so itself) and resumes right after it, losing and repeating nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from agent_service.database import session_scope
from agent_service.http.keys import Tenant
from agent_service.http.problems import ProblemError, problem_responses
from agent_service.http.tasks import owned_task
from agent_service.live.follow import follow_task
from agent_service.services import Services
from agent_service.submission.follow import FollowedTask

router = APIRouter(prefix="/v1", responses=problem_responses(401, 422, 429))
MEDIA_TYPE = "text/event-stream"
_STREAM = {MEDIA_TYPE: {"schema": {"type": "string"}}}
_EVENTS: dict[int | str, dict[str, Any]] = {200: {"description": "the task's events", "content": _STREAM}}


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={**_EVENTS, **problem_responses(404, 503)},
)
def task_events(
    request: Request,
    tenant: Tenant,
    task_id: str,
    last_event_id: Annotated[str | None, Header(max_length=100, description="resume after this event")] = None,
) -> StreamingResponse:
    """The task's events until it ends: `started`, `token`, `step`, `tool_call`, `tool_result`,
    `awaiting_approval`, `retrying`, `deferred`, and last `ended`, each with its JSON `data`."""
    services: Services = request.app.state.services
    with session_scope(services.session_factory) as session:
        parsed = owned_task(session, task_id, tenant=tenant).id
    if not services.settings.redis_url:
        raise ProblemError(503, "live output needs REDIS_URL")
    events = follow_task(
        parsed,
        redis=services.redis,
        last_event_id=last_event_id or "0",
        record=FollowedTask(parsed, services=services),
    )
    return StreamingResponse(_sse(event.sse() for event in events), media_type=MEDIA_TYPE, headers=_NO_BUFFERING)


# Proxies (nginx) hold back a response they may buffer: each event should leave at once.
_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(events: Iterator[str]) -> Iterator[str]:
    """The events, after a `retry` line telling a browser to reconnect within a second when cut off."""
    yield "retry: 1000\n\n"
    yield from events
