"""Fair-share dispatch on real PostgreSQL and Redis, with no worker: the dispatch order, the short broker
queue, dispatchers that run at once, the sweeper, and a dispatcher that dies mid-round."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import delete, select, update

from agent_service.clock import utcnow
from agent_service.config import Settings
from agent_service.database import session_scope
from agent_service.errors import TaskValidationError
from agent_service.execution.maintenance import requeue_stuck_tasks
from agent_service.messaging.dispatch import dispatch_waiting
from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.models import Task, TaskStatus
from agent_service.store import dispatch
from agent_service.tasks import create_agent_tasks
from agent_service.worker import create_celery_app
from tests.integration.conftest import IDLE_REDIS, ROOT

TARGET = 20


@pytest.fixture(scope="module")
def fair_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"dispatch_mode": "fair", "dispatch_target_in_flight": TARGET, "redis_url": IDLE_REDIS}
    )


@pytest.fixture(scope="module")
def fair_app(fair_settings: Settings):
    """A fair-dispatch app whose broker no worker reads: what it publishes stays in Redis."""
    app = create_celery_app(fair_settings)
    yield app
    app.services.engine.dispose()


@pytest.fixture
def broker(fair_app) -> redis.Redis:
    client = redis.Redis.from_url(IDLE_REDIS)
    client.flushdb()
    return client


@pytest.fixture
def backlog_agent(agent, session_factory) -> Iterator:
    """The agent, whose tasks are deleted afterwards: no waiting row outlives the test."""
    yield agent
    with session_scope(session_factory) as session:
        session.execute(delete(Task).where(Task.agent_id == agent.id))


def _items(agent, user: str, count: int, *, priority: int = 0) -> list[dict]:
    return [
        {"title": f"{user} task {n}", "agent_id": str(agent.id), "user_id": user, "priority": priority}
        for n in range(count)
    ]


def _committed_waiting(session_factory, agent, user: str, count: int) -> list[str]:
    """Waiting rows written straight to the database, as a submission that found no room leaves them."""
    tasks = [
        Task(title=f"{user} {n}", agent_id=agent.id, user_id=user, status=TaskStatus.WAITING) for n in range(count)
    ]
    with session_scope(session_factory) as session:
        session.add_all(tasks)
    return [str(task.id) for task in tasks]


def _room(session_factory, settings: Settings) -> int:
    """What the dispatchers may publish now: tasks other tests left queued count against the target."""
    with session_scope(session_factory) as session:
        return settings.dispatch_target_in_flight - dispatch.in_flight(session, now=utcnow(), settings=settings)


def _published_ids(broker: redis.Redis) -> list[str]:
    return [json.loads(message)["headers"]["id"] for message in broker.lrange(AGENT_QUEUE, 0, -1)]


def _statuses(session_factory, ids) -> dict[str, TaskStatus]:
    with session_scope(session_factory) as session:
        rows = session.execute(select(Task.id, Task.status).where(Task.id.in_([uuid.UUID(i) for i in ids])))
        return {str(task_id): status for task_id, status in rows}


def _waiting_tasks(db_session, agent, titles_by_user: dict[str, int], *, start=None) -> None:
    """Waiting rows, each user's created one millisecond after the previous."""
    start = start or utcnow()
    for user, count in titles_by_user.items():
        for n in range(count):
            db_session.add(
                Task(
                    title=f"{user}{n + 1}",
                    agent_id=agent.id,
                    user_id=user,
                    status=TaskStatus.WAITING,
                    created_at=start + timedelta(milliseconds=n),
                )
            )
    db_session.flush()


def _titles(db_session, task_ids) -> list[str]:
    titles = dict(db_session.execute(select(Task.id, Task.title).where(Task.id.in_(task_ids))).all())
    return [titles[task_id] for task_id in task_ids]


def test_dispatch_order_takes_one_task_of_each_user_in_turn(db_session, agent):
    # Given a backlog of 5 tasks for user a, 2 for b and 1 for c
    _waiting_tasks(db_session, agent, {"a": 5, "b": 2, "c": 1})
    # When a round takes 5
    taken = dispatch.take_waiting(db_session, limit=5)
    # Then every user's first task comes before anyone's second, each user's oldest first
    titles = _titles(db_session, taken)
    assert set(titles[:3]) == {"a1", "b1", "c1"}
    assert set(titles[3:]) == {"a2", "b2"}


def test_a_higher_priority_task_comes_before_an_older_backlog(db_session, agent):
    # Given user a's backlog of 50 tasks, then a task of priority 5 from user b
    _waiting_tasks(db_session, agent, {"a": 50})
    db_session.add(Task(title="urgent", agent_id=agent.id, user_id="b", status=TaskStatus.WAITING, priority=5))
    db_session.flush()
    # When the next round takes one task, it is the urgent one
    assert _titles(db_session, dispatch.take_waiting(db_session, limit=1)) == ["urgent"]


def test_a_task_locked_by_one_dispatcher_is_skipped_by_another(backlog_agent, session_factory):
    # Given 10 committed waiting tasks
    ids = _committed_waiting(session_factory, backlog_agent, "skip", 10)
    # When one transaction holds the first 4, another takes the rest without waiting for it
    with session_scope(session_factory) as first, session_scope(session_factory) as second:
        held = dispatch.take_waiting(first, limit=4)
        rest = dispatch.take_waiting(second, limit=10)
    # Then the two sets are disjoint
    assert len(held) == 4
    assert not set(held) & set(rest)
    assert set(held) | set(rest) <= {uuid.UUID(i) for i in ids}


def test_the_broker_queue_stays_at_the_target_while_a_backlog_waits(backlog_agent, fair_app, broker, session_factory):
    # When 500 tasks are submitted at once, with no worker to start them
    room = _room(session_factory, fair_app.services.settings)
    ids = create_agent_tasks(_items(backlog_agent, "bulk", 500), app=fair_app)
    # Then only as many as DISPATCH_TARGET_IN_FLIGHT allows are in the broker (the room earlier tests' tasks
    # left, give or take one of theirs leaving the in-flight window meanwhile), the rest wait in PostgreSQL
    published = broker.llen(AGENT_QUEUE)
    assert 0 < room <= TARGET and 0 < published <= TARGET and abs(published - room) <= 1
    # And further rounds add nothing while those stay unstarted
    assert dispatch_waiting(fair_app, session_factory, fair_app.services.settings) == 0
    statuses = list(_statuses(session_factory, ids).values())
    assert statuses.count(TaskStatus.QUEUED) == published
    assert statuses.count(TaskStatus.WAITING) == 500 - published


def test_a_task_submitted_with_room_in_the_broker_is_published_at_once(backlog_agent, fair_app, broker):
    [task_id] = create_agent_tasks(_items(backlog_agent, "alone", 1), app=fair_app)
    assert _published_ids(broker) == [task_id]


def test_priority_is_bounded(backlog_agent, fair_app):
    with pytest.raises(TaskValidationError, match="priority"):
        create_agent_tasks(_items(backlog_agent, "greedy", 1, priority=10), app=fair_app)


def test_dispatchers_running_at_once_never_publish_a_task_twice(backlog_agent, fair_settings, broker, session_factory):
    # Given 600 waiting tasks and room for all of them
    roomy = fair_settings.model_copy(update={"dispatch_target_in_flight": 1000})
    ids = _committed_waiting(session_factory, backlog_agent, "race", 600)
    # When four dispatchers, each with its own app and connections, run at once
    apps = [create_celery_app(roomy) for _ in range(4)]
    threads = [
        threading.Thread(target=dispatch_waiting, args=(app, app.services.session_factory, roomy)) for app in apps
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for app in apps:  # each dispatcher stops when a round finds nothing to do, or finds another at it
        dispatch_waiting(app, app.services.session_factory, roomy)
    # Then every waiting task was published exactly once
    published = _published_ids(broker)
    assert len(published) == len(set(published)) == 600
    assert set(_statuses(session_factory, ids).values()) == {TaskStatus.QUEUED}
    for app in apps:
        app.services.engine.dispose()


def test_the_sweeper_recovers_a_dispatched_task_whose_message_was_lost(
    backlog_agent, fair_app, broker, session_factory
):
    # Given a task dispatched, then its message lost with the broker's data
    [task_id] = create_agent_tasks(_items(backlog_agent, "lost", 1), app=fair_app)
    broker.flushdb()
    # When it has been queued past the stale threshold and the sweeper runs
    long_ago = utcnow() - timedelta(seconds=fair_app.services.settings.stale_task_after_seconds + 60)
    with session_scope(session_factory) as session:
        session.execute(update(Task).where(Task.id == uuid.UUID(task_id)).values(updated_at=long_ago))
    requeue_stuck_tasks(
        app=fair_app, session_factory=fair_app.services.session_factory, settings=fair_app.services.settings
    )
    # Then its message is in the broker again, once (a row another test left pending may be requeued with it)
    assert _published_ids(broker).count(task_id) == 1


DIE_MID_ROUND = """
import os, signal, sys
from agent_service.database import session_scope
from agent_service.messaging.publisher import publish_tasks
from agent_service.store import dispatch
from tests.support import make_settings
from agent_service.worker import create_celery_app

app = create_celery_app(make_settings(database_url=sys.argv[1], redis_url=sys.argv[2], dispatch_mode="fair"))
with session_scope(app.services.session_factory) as session:
    assert dispatch.take_dispatch_turn(session)
    publish_tasks(app, dispatch.take_waiting(session, limit=5))
    os.kill(os.getpid(), signal.SIGKILL)  # dead after publishing, before the commit
"""


def test_a_dispatcher_killed_mid_round_leaves_its_tasks_to_the_next_round(
    backlog_agent, fair_app, broker, session_factory, database_url
):
    # Given 5 waiting tasks
    ids = _committed_waiting(session_factory, backlog_agent, "doomed", 5)
    # When a dispatcher process is killed after publishing them, before its commit
    killed = subprocess.run([sys.executable, "-c", DIE_MID_ROUND, database_url, IDLE_REDIS], cwd=ROOT, check=False)
    assert killed.returncode == -9
    assert sorted(_published_ids(broker)) == sorted(ids)
    # Then the tasks are still waiting, unlocked, and the next round publishes them again
    assert set(_statuses(session_factory, ids).values()) == {TaskStatus.WAITING}
    broker.flushdb()
    assert dispatch_waiting(fair_app, session_factory, fair_app.services.settings) == 5
    assert sorted(_published_ids(broker)) == sorted(ids)
    assert set(_statuses(session_factory, ids).values()) == {TaskStatus.QUEUED}
