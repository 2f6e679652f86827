"""Scenarios 3 and 5: the broker dies, on Redis (which also holds the results: killed -9, it comes back empty)
and on RabbitMQ (`rabbitmqctl stop_app` / `start_app`: its quorum queues keep their messages). Workers
reconnect by themselves, and the beat-driven sweeper re-queues every row whose message vanished or was never
published."""

from __future__ import annotations

import pytest

from agent_service.errors import BrokerUnavailableError
from agent_service.models import TaskStatus
from tests.chaos.harness import BROKERS, BROKERS_IN_FULL, sized

TASKS = sized(30, 150)
LATE_TASKS = sized(10, 50)


@BROKERS
def test_workers_survive_a_broker_restart_and_nothing_queued_is_lost(scenario, llm, broker):
    # Given a worker with beat, busy with ~500 ms tasks, more of them queued in the broker
    run = scenario("3 broker killed and restarted", worker_concurrency=4)
    llm.add_fault(fault="slow", match=run.token, delay_ms=500)
    run.start_worker("survivor", beat=True)
    run.submit(TASKS, label="before")
    run.wait_for_progress(completed=4)
    # When the broker is stopped and started again (Redis: killed -9, started empty on the same port)
    broker.restart()
    # Then tasks submitted after the restart complete (the worker reconnected by itself)
    late = run.submit(LATE_TASKS, label="after")
    run.wait(late, timeout=sized(60, 180))
    # And the sweeper re-queues those whose message vanished: every task completes, once
    run.wait(timeout=sized(60, 240))
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.duplicates) == (TASKS + LATE_TASKS, 0, 0)


@BROKERS_IN_FULL
def test_task_submitted_while_the_broker_is_down_is_queued_by_the_sweeper_later(scenario, broker):
    # Given a broker that is down
    run = scenario("5 broker down at submit")
    run.app.conf.broker_connection_timeout = 1
    run.app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    broker.kill()
    # When a task is submitted, it is refused, and its row stays pending
    with pytest.raises(BrokerUnavailableError, match="saved as pending but not queued"):
        run.submit(1)
    assert [row.status for row in run.rows()] == [TaskStatus.PENDING]
    # Then once the broker is back, the beat-driven sweeper queues it and it completes
    broker.start()
    run.start_worker("after-outage", beat=True)
    [row] = run.wait(timeout=sized(30, 60)).values()
    assert row.status == TaskStatus.COMPLETED
    tally = run.tally()
    assert (tally.completed, tally.lost, tally.llm_calls) == (1, 0, 1)
