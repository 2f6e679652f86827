"""The ASGI app: `create_api(celery_app)` serves the routes with the app's services; its OpenAPI document is
at `/openapi.json` (and committed as docs/reference/openapi.json)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from celery import Celery
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from agent_service.http import events, probes, tasks
from agent_service.http.bodies import BodyLimit
from agent_service.http.keys import RequestRate
from agent_service.http.problems import Problem, install_handlers
from agent_service.http.schemas import batch_schema, submission_schema
from agent_service.services import services_of

TITLE = "Agent Service"
# Each SSE follower holds a thread while it waits for its task's next event (a blocking read of its stream, 5 s
# at most): with anyio's default of 40, the 41st follower, and every plain request, would wait for a free one.
THREADS = 200
API_VERSION = "1"  # of the contract (the paths' /v1), not of the package: a new field is no new version
DESCRIPTION = (
    "Submit, read, follow live, approve and cancel agent tasks. Every /v1 request carries an API key "
    "(`Authorization: Bearer KEY`) bound to one tenant: the user of the tasks it submits, and the only tasks it sees. "
    "Errors are RFC 9457 problem details with a stable `code`."
)


def create_api(celery_app: Celery) -> FastAPI:
    """The API on `celery_app` (one `worker.create_celery_app` built) and its services."""
    services = services_of(celery_app)
    settings = services.settings
    api = FastAPI(
        title=TITLE,
        version=API_VERSION,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    api.state.services, api.state.celery = services, celery_app
    redis = (lambda: services.redis) if settings.redis_url else None
    api.state.rate = RequestRate(settings.api_requests_per_minute, redis=redis)
    api.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    install_handlers(api)
    for module in (tasks, events, probes):
        api.include_router(module.router)
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


@asynccontextmanager
async def _lifespan(_api: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    yield


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the schemas the routes name but read themselves (submitted tasks, problems)."""
    if api.openapi_schema is None:
        document = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas.update(Problem=problem, TaskSubmission=submission_schema(), TaskBatch=batch_schema())
        api.openapi_schema = document
    return api.openapi_schema
