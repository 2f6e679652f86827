"""The floor: a Celery no-op on the same broker with the service's own Celery configuration
(`worker.celery_config`), so the bench can tell what Celery itself costs per task.

Each task appends "sent_at done_at" to one Redis list. That is a single round trip per task, and the
list gives the bench both the completion count (LLEN; a duplicate delivery would push it past N) and
every task's enqueue-to-done time, without a database row. Run from the repository root:
`celery -A bench.floor worker --pool=prefork --concurrency=4 -Q agent_tasks`.
"""

from __future__ import annotations

import time
from functools import cache

import redis
from celery import Celery

from agent_service.config import Settings, get_settings
from agent_service.worker import celery_config

NOOP_TASK_NAME = "bench.floor.noop"
DONE_KEY = "bench:floor:done"


def create_floor_app(settings: Settings) -> Celery:
    """A Celery app configured exactly like the service's, without its tasks' database or LLM."""
    floor_app = Celery("bench_floor", broker=settings.broker_url)
    floor_app.conf.update(celery_config(settings))
    return floor_app


app = create_floor_app(get_settings())


@app.task(name=NOOP_TASK_NAME, ignore_result=True)
def noop(sent_at: float) -> None:
    """Do nothing but record that this message was delivered and when."""
    _done_list(app.conf.broker_url).rpush(DONE_KEY, f"{sent_at} {time.time()}")


@cache
def _done_list(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)
