"""The HTTP API's cost: submissions per second over HTTP, one task per request and batches of `SUBMIT_CHUNK`,
and the latency `POST /v1/tasks` adds at light load (one client, one request at a time) beside
`create_agent_task` in the same process, same database and same broker, measured in the same run.

The API runs as `python cli.py api` does in production (one uvicorn process); the client keeps its connection
open, as an application's client does. Tasks go to a broker nobody consumes, as in the bulk-submit measurement.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

import httpx
import redis

from agent_service.database import session_scope
from agent_service.devtools.processes import api_server
from agent_service.store.api_keys import create_key
from agent_service.tasks import create_agent_task
from agent_service.worker import create_celery_app
from bench.environment import IDLE_REDIS, BenchEnvironment, truncate_tasks
from bench.scenarios import RESULTS_DIR, SUBMIT_CHUNK

WARMUP = 20


@dataclass(frozen=True)
class HttpSubmitResult:
    """Submissions over HTTP, and the added latency of one `POST /v1/tasks` over `create_agent_task`."""

    single_tasks: int
    single_per_second: float
    bulk_tasks: int
    bulk_chunk: int
    bulk_per_second: float
    http_p50_ms: float
    direct_p50_ms: float
    added_p50_ms: float

    def line(self) -> str:
        return (
            f"HTTP submit: {self.single_per_second:,.0f} tasks/s one per request ({self.single_tasks}), "
            f"{self.bulk_per_second:,.0f} tasks/s in batches of {self.bulk_chunk} ({self.bulk_tasks}); "
            f"POST /v1/tasks p50 {self.http_p50_ms:.1f} ms vs create_agent_task {self.direct_p50_ms:.1f} ms "
            f"(+{self.added_p50_ms:.1f} ms)"
        )


def measure_http_submit(env: BenchEnvironment, *, single: int, bulk: int) -> HttpSubmitResult:
    """Time `single` one-task requests, `bulk` tasks in batches, and as many direct `create_agent_task` calls."""
    settings = env.settings.model_copy(update={"redis_url": IDLE_REDIS, "api_requests_per_minute": 10_000_000})
    idle_app = create_celery_app(settings)
    redis.Redis.from_url(IDLE_REDIS).flushdb()
    truncate_tasks(env.app)
    with session_scope(idle_app.services.session_factory) as session:
        _, key = create_key(session, tenant=f"bench-{uuid.uuid4().hex[:8]}")
    item = {"title": "bench task", "description": "Summarise the benchmark in one line.", "agent_id": env.agent_id}
    try:
        with (
            api_server(settings.as_env(), log_path=RESULTS_DIR / "http-api.log") as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http,
        ):
            _timed(lambda: http.post("/v1/tasks", json=item).raise_for_status(), WARMUP)
            http_times = _timed(lambda: http.post("/v1/tasks", json=item).raise_for_status(), single)
            batch = {"tasks": [item] * SUBMIT_CHUNK}
            batches = max(1, bulk // SUBMIT_CHUNK)
            bulk_seconds = sum(_timed(lambda: http.post("/v1/tasks/batch", json=batch).raise_for_status(), batches))
        direct_item = {**item, "user_id": "bench-direct"}
        _timed(lambda: create_agent_task(direct_item, app=idle_app), WARMUP)
        direct_times = _timed(lambda: create_agent_task(direct_item, app=idle_app), single)
    finally:
        redis.Redis.from_url(IDLE_REDIS).flushdb()
        truncate_tasks(env.app)
        idle_app.services.engine.dispose()
    http_p50, direct_p50 = statistics.median(http_times) * 1000, statistics.median(direct_times) * 1000
    return HttpSubmitResult(
        single_tasks=single,
        single_per_second=single / sum(http_times),
        bulk_tasks=batches * SUBMIT_CHUNK,
        bulk_chunk=SUBMIT_CHUNK,
        bulk_per_second=batches * SUBMIT_CHUNK / bulk_seconds,
        http_p50_ms=http_p50,
        direct_p50_ms=direct_p50,
        added_p50_ms=http_p50 - direct_p50,
    )


def _timed(call, times: int) -> list[float]:
    """Each call's duration in seconds, one after another."""
    durations = []
    for _ in range(times):
        begun = time.perf_counter()
        call()
        durations.append(time.perf_counter() - begun)
    return durations
