"""The `/v1` routes on tasks, groups and statistics: each checks that what it names is the key's tenant's (an
id of another tenant's answers 404, exactly like an unknown one), then calls the function the command line
and `create_agent_task` call."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from agent_service.clock import utcnow
from agent_service.database import session_scope
from agent_service.errors import TaskNotFoundError, TaskValidationError
from agent_service.http.keys import Tenant
from agent_service.http.problems import ProblemError, problem_responses
from agent_service.http.schemas import (
    Cancelled,
    Decided,
    Decision,
    GroupView,
    Stats,
    Submitted,
    SubmittedBatch,
    TaskDetails,
    TaskPage,
)
from agent_service.models import Task, TaskStatus
from agent_service.services import Services
from agent_service.store import steps
from agent_service.store import tasks as store_tasks
from agent_service.store.stats import GroupBy, task_stats
from agent_service.submission.approvals import approve_task, reject_task
from agent_service.submission.groups import group_progress
from agent_service.submission.submit import cancel_task, create_agent_tasks
from agent_service.terminal.records import group_record, stats_record, task_details, task_record

router = APIRouter(prefix="/v1", responses=problem_responses(401, 422, 429))


def _body_of(schema: str) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {"requestBody": {"content": content, "required": True}}


@router.post(
    "/tasks",
    status_code=202,
    response_model=Submitted,
    openapi_extra=_body_of("TaskSubmission"),
    responses=problem_responses(413, 503),
)
async def submit_task(
    request: Request,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(description="a repeat returns the first task's id")] = None,
) -> JSONResponse:
    """Validate, store and queue a task, as `create_agent_task` does; its `user_id` is the key's tenant."""
    item = _task_of(await _json_body(request), tenant=tenant, where="task")
    if idempotency_key is not None and item.setdefault("idempotency_key", idempotency_key) != idempotency_key:
        raise TaskValidationError("invalid task input: idempotency_key: differs from the Idempotency-Key header")
    ids = await _submit(request, [item], group=None)
    return JSONResponse({"id": ids[0]}, status_code=202, headers={"Location": f"/v1/tasks/{ids[0]}"})


@router.post(
    "/tasks/batch",
    status_code=202,
    response_model=SubmittedBatch,
    openapi_extra=_body_of("TaskBatch"),
    responses=problem_responses(413, 503),
)
async def submit_tasks(request: Request, tenant: Tenant) -> JSONResponse:
    """Many tasks in one transaction (`create_agent_tasks`), optionally joining one `group` of the tenant's."""
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("tasks"), list) or not body["tasks"]:
        raise TaskValidationError("invalid task input: tasks: a non-empty list of tasks is required")
    if unknown := sorted(set(body) - {"tasks", "group"}):
        raise TaskValidationError(f"invalid task input: {', '.join(unknown)}: unknown field")
    items = [_task_of(item, tenant=tenant, where=f"item {at}") for at, item in enumerate(body["tasks"])]
    return JSONResponse({"ids": await _submit(request, items, group=body.get("group"))}, status_code=202)


@router.get("/tasks", response_model=TaskPage)
def list_tasks(
    request: Request,
    tenant: Tenant,
    status: TaskStatus | None = None,
    group: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int | None, Query(ge=1, le=500, description="default: API_PAGE_SIZE")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="the `next_cursor` of the page before")] = None,
) -> dict[str, Any]:
    """The tenant's tasks, newest first, a page at a time."""
    size = limit or _services(request).settings.api_page_size
    with session_scope(_services(request).session_factory) as session:
        found = store_tasks.list_tasks(
            session, user_id=tenant, status=status, group_id=group, before=_cursor_position(cursor), limit=size
        )
        records = [task_record(task) for task in found]
    last = found[-1] if len(found) == size else None
    return {"tasks": records, "next_cursor": _cursor(last) if last else None}


@router.get("/tasks/{task_id}", response_model=TaskDetails, responses=problem_responses(404))
def get_task(request: Request, tenant: Tenant, task_id: str) -> dict[str, Any]:
    """Everything about one task: status, result, result_data, usage, cost, why it waits, attempts, steps."""
    with session_scope(_services(request).session_factory) as session:
        task = owned_task(session, task_id, tenant=tenant)
        return task_details(task, steps=steps.step_rows(session, task.id))


@router.post("/tasks/{task_id}/cancel", response_model=Cancelled, responses=problem_responses(404))
def cancel(request: Request, tenant: Tenant, task_id: str) -> dict[str, Any]:
    """Cancel a queued or running task (a task that has ended keeps its status)."""
    parsed = _owned_id(request, task_id, tenant=tenant)
    status = cancel_task(str(parsed), services=_services(request), app=request.app.state.celery)
    return {"id": parsed, "status": status}


@router.post("/tasks/{task_id}/approve", response_model=Decided, responses=problem_responses(404, 409, 503))
def approve(request: Request, tenant: Tenant, task_id: str, decision: Decision | None = None) -> dict[str, Any]:
    """Approve the tool calls the task awaits approval for; it is queued to go on."""
    return _decide(approve_task, request, task_id, tenant=tenant, decision=decision)


@router.post("/tasks/{task_id}/reject", response_model=Decided, responses=problem_responses(404, 409, 503))
def reject(request: Request, tenant: Tenant, task_id: str, decision: Decision | None = None) -> dict[str, Any]:
    """Reject them: never made, and the model reads the rejection (with the note) as their result."""
    return _decide(reject_task, request, task_id, tenant=tenant, decision=decision)


def _decide(
    decide: Callable[..., list[str]], request: Request, task_id: str, *, tenant: str, decision: Decision | None
) -> dict[str, Any]:
    parsed = _owned_id(request, task_id, tenant=tenant)
    note = decision.note if decision else None
    tools = decide(str(parsed), app=request.app.state.celery, services=_services(request), note=note)
    return {"id": parsed, "tools": tools}


@router.get("/groups/{group_id}", response_model=GroupView, responses=problem_responses(404))
def get_group(request: Request, tenant: Tenant, group_id: str) -> dict[str, Any]:
    """A group's progress: its tasks by status, tokens, cost, and whether it has ended."""
    progress = group_progress(group_id, services=_services(request))
    if progress.user_id != tenant:
        raise TaskNotFoundError(f"no group {group_id!r}")
    return group_record(progress)


@router.get("/stats", response_model=Stats)
def stats(
    request: Request,
    tenant: Tenant,
    by: GroupBy | None = None,
    since_seconds: Annotated[int, Query(ge=1, le=366 * 86400)] = 86400,
) -> dict[str, Any]:
    """The tenant's tasks finished lately: counts, success rate, durations, tokens and cost (`cli.py stats`)."""
    since = utcnow() - timedelta(seconds=since_seconds)
    with session_scope(_services(request).session_factory) as session:
        figures = task_stats(session, by=by, since=since, user_id=tenant)
    return {"since_seconds": since_seconds, "groups": [stats_record(group, by=by or "all") for group in figures]}


def owned_task(session: Session, task_id: str, *, tenant: str) -> Task:
    """The task `task_id` if it is `tenant`'s. Raises: TaskNotFoundError (unknown, not an id, or another's)."""
    try:
        task = session.get(Task, uuid.UUID(task_id))
    except ValueError:
        task = None
    if task is None or task.user_id != tenant:
        raise TaskNotFoundError(f"no task {task_id}")
    return task


def _owned_id(request: Request, task_id: str, *, tenant: str) -> uuid.UUID:
    with session_scope(_services(request).session_factory) as session:
        return owned_task(session, task_id, tenant=tenant).id


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProblemError(422, f"the body is not JSON: {exc}") from None


def _task_of(item: Any, *, tenant: str, where: str) -> dict[str, Any]:
    """A submitted task as `create_agent_task` takes it: the key's tenant is its user."""
    if not isinstance(item, dict):
        raise TaskValidationError(f"invalid task input: {where}: must be an object")
    if "user_id" in item:
        raise TaskValidationError(f"invalid task input: {where}: user_id: is the API key's tenant; leave it out")
    return {**item, "user_id": tenant}


async def _submit(request: Request, items: list[dict[str, Any]], *, group: Any) -> list[str]:
    if group is not None and not isinstance(group, str):
        raise TaskValidationError("invalid task input: group: must be a string")
    celery, services = request.app.state.celery, _services(request)
    return await run_in_threadpool(create_agent_tasks, items, app=celery, services=services, group=group)


def _cursor(task: Task) -> str:
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode()


def _cursor_position(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        created, _, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(task_id)
    except (binascii.Error, UnicodeError, ValueError):
        raise ProblemError(422, "cursor: not a cursor this API gave") from None
