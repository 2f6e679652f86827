"""A batch's messages are acknowledged one by one as their tasks are recorded (threads pool), so that a slow
task does not hold the prefetch slots of the rest of its batch."""

from __future__ import annotations

import uuid

import redis

from agent_service.database import session_scope
from agent_service.devtools.processes import celery_worker
from agent_service.models import Task, TaskStatus
from agent_service.tasks import create_agent_tasks
from tests.integration.conftest import IDLE_REDIS
from tests.integration.test_worker import unique
from tests.support import wait_for_final, wait_until


def test_a_recorded_tasks_message_is_acknowledged_while_the_rest_of_its_batch_still_runs(
    idle_app, idle_redis, agent, llm, settings, session_factory, tmp_path
):
    # Given six tasks waiting in the broker before a worker starts (so handed over as one batch), one of whose
    # calls takes 4 s
    slow = unique("acked late")
    llm.add_fault(fault="slow", match=slow, delay_ms=4000)
    titles = [slow, *(unique("acked early") for _ in range(5))]
    slow_id, *fast_ids = create_agent_tasks(
        [{"title": title, "agent_id": str(agent.id), "user_id": "u-acks"} for title in titles], app=idle_app
    )
    env = {**settings.as_env(), "REDIS_URL": IDLE_REDIS}
    with celery_worker(env=env, log_path=tmp_path / "acks.log", name="acks"):
        # When the fast ones are recorded
        fast = wait_for_final(session_factory, fast_ids, timeout=30)
        assert {task.status for task in fast.values()} == {TaskStatus.COMPLETED}
        # Then their messages are no longer held by the worker (kombu's `unacked` hash; each is acknowledged
        # just after its group's commit), while the slow one's is, its call still under way
        wait_until(lambda: not held(fast_ids), what="the recorded tasks' messages acknowledged", timeout=3)
        assert held([slow_id]) == [slow_id]
        with session_scope(session_factory) as session:
            assert session.get(Task, uuid.UUID(slow_id)).status is TaskStatus.RUNNING
        assert wait_for_final(session_factory, [slow_id], timeout=30)[slow_id].status is TaskStatus.COMPLETED
    assert idle_redis.hlen("unacked") == 0


def held(task_ids: list[str]) -> list[str]:
    """Those of `task_ids` whose message the worker holds delivered and not yet acknowledged."""
    unacked = [value.decode() for value in redis.Redis.from_url(IDLE_REDIS).hvals("unacked")]
    return [task_id for task_id in task_ids if any(task_id in value for value in unacked)]


def test_a_retried_tasks_next_message_leaves_while_the_rest_of_its_batch_still_runs(
    idle_app, idle_redis, agent, llm, settings, session_factory, tmp_path
):
    # Given six tasks waiting in the broker before a worker starts (one batch): one call takes 4 s, and one
    # meets a 429 asking for a 1 s wait before its retry
    slow, retried = unique("held batch"), unique("retried at once")
    llm.add_fault(fault="slow", match=slow, delay_ms=4000)
    llm.add_fault(fault="429", match=retried, times=1, retry_after=1)
    titles = [slow, retried, *(unique("alongside") for _ in range(4))]
    slow_id, retried_id, *_ = create_agent_tasks(
        [{"title": title, "agent_id": str(agent.id), "user_id": "u-acks"} for title in titles], app=idle_app
    )
    env = {**settings.as_env(), "REDIS_URL": IDLE_REDIS}
    with celery_worker(env=env, log_path=tmp_path / "retries.log", name="retries"):
        # When the retried task's second attempt ends
        again = wait_for_final(session_factory, [retried_id], timeout=30)[retried_id]
        # Then it ran while the slow call of its first batch was still under way: its next message was
        # published as its first attempt was recorded, not when its batch ended
        assert (again.status, again.attempts) == (TaskStatus.COMPLETED, 2)
        with session_scope(session_factory) as session:
            assert session.get(Task, uuid.UUID(slow_id)).status is TaskStatus.RUNNING
        assert wait_for_final(session_factory, [slow_id], timeout=30)[slow_id].status is TaskStatus.COMPLETED
    assert idle_redis.hlen("unacked") == 0
