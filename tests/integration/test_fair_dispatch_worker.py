"""Fair-share dispatch with a real worker (DISPATCH_MODE=fair) draining one user's slow backlog: another
user's tasks and a higher-priority task do not wait for it, and the backlog itself completes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from agent_service.config import Settings
from agent_service.database import create_empty_database, session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import FINAL_STATUSES, Task
from agent_service.store.schema import init_db
from agent_service.tasks import create_agent_tasks
from agent_service.worker import create_celery_app
from tests.chaos.services import RedisServer
from tests.integration.conftest import LOG_DIR, PG_ROOT, TEST_DB
from tests.support import add_agent, wait_for_final

BACKLOG = 200
SLOW_MS = 300  # each backlog call; 20 at once, so the backlog takes about 3 s to drain
CONCURRENCY = 20


@pytest.fixture(scope="module")
def fair_settings(settings: Settings) -> Iterator[Settings]:
    """A database and a broker of the module's own: tasks other tests leave queued (on a broker no worker reads)
    count as in flight for a minute and would hold the dispatcher back, and the session's worker would take
    this module's messages for tasks its database does not have."""
    database_url = create_empty_database(PG_ROOT, f"{TEST_DB}_fair")
    init_db(database_url)
    with RedisServer.running() as broker:
        yield settings.model_copy(
            update={
                "database_url": database_url,
                "redis_url": broker.url(),
                "dispatch_mode": "fair",
                "dispatch_target_in_flight": 10,
                "worker_concurrency": CONCURRENCY,
                "llm_concurrency": CONCURRENCY,
                "batch_max_size": 10,
            }
        )


@pytest.fixture(scope="module")
def fair_app(fair_settings: Settings):
    app = create_celery_app(fair_settings)
    yield app
    app.services.engine.dispose()


@pytest.fixture(scope="module")
def fair_worker(fair_settings: Settings) -> Iterator[None]:
    with celery_worker(env=fair_settings.as_env(), log_path=LOG_DIR / "fair-worker.log", name="fair"):
        yield


@pytest.fixture
def slow_backlog(fair_worker, fair_app, llm) -> Iterator[tuple[list[str], object]]:
    """User "hog" submits BACKLOG slow tasks at once; the test waits for all of them at the end."""
    agent = add_agent(fair_app.services.session_factory)
    token = uuid.uuid4().hex
    llm.add_fault(fault="slow", match=token, delay_ms=SLOW_MS)
    items = [{"title": f"hog {token} {n}", "agent_id": str(agent.id), "user_id": "hog"} for n in range(BACKLOG)]
    ids = create_agent_tasks(items, app=fair_app)
    yield ids, agent
    tasks = wait_for_final(fair_app.services.session_factory, ids, timeout=120)
    assert {task.status.value for task in tasks.values()} == {"completed"}


def _unfinished(session_factory, ids: list[str]) -> int:
    with session_scope(session_factory) as session:
        return session.scalar(
            select(func.count()).where(Task.id.in_([uuid.UUID(i) for i in ids]), Task.status.not_in(FINAL_STATUSES))
        )


def test_another_users_tasks_are_not_held_back_by_a_backlog(slow_backlog, fair_app):
    backlog, agent = slow_backlog
    # When user "polite" submits a few tasks right after the backlog
    items = [{"title": f"polite {n}", "agent_id": str(agent.id), "user_id": "polite"} for n in range(5)]
    polite = create_agent_tasks(items, app=fair_app)
    # Then they complete while most of the backlog still waits
    finished = wait_for_final(fair_app.services.session_factory, polite, timeout=30)
    assert {task.status.value for task in finished.values()} == {"completed"}
    assert _unfinished(fair_app.services.session_factory, backlog) > BACKLOG // 2


def test_a_higher_priority_task_overtakes_a_backlog(slow_backlog, fair_app):
    backlog, agent = slow_backlog
    # When the same user submits an urgent task after its own backlog
    [urgent] = create_agent_tasks(
        [{"title": "urgent", "agent_id": str(agent.id), "user_id": "hog", "priority": 9}], app=fair_app
    )
    # Then it completes while most of the backlog still waits
    finished = wait_for_final(fair_app.services.session_factory, [urgent], timeout=30)
    assert finished[urgent].status.value == "completed"
    assert _unfinished(fair_app.services.session_factory, backlog) > BACKLOG // 2
