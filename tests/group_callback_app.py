"""A stand-in for an application's own Celery app, whose task a group names as its `on_complete`: each run
appends its group id, outcomes and Celery task id to a Redis list (CALLBACK_REDIS_URL), so a test counts the
runs; its broker (CALLBACK_BROKER_URL) is the service's, Redis or RabbitMQ."""

from __future__ import annotations

import json
import os

import redis
from celery import Celery, Task

CALLBACK_NAME = "tests.group_callbacks.record"
app = Celery("group_callbacks", broker=os.environ.get("CALLBACK_BROKER_URL", "memory://"))
app.conf.update(task_serializer="json", accept_content=["json"])


def runs_key(group_id: str) -> str:
    return f"test-group-callback:{group_id}"


@app.task(bind=True, name=CALLBACK_NAME)
def record(self: Task, group_id: str, outcomes: list | dict) -> None:
    run = {"celery_task_id": self.request.id, "group_id": group_id, "outcomes": outcomes}
    redis.Redis.from_url(os.environ["CALLBACK_REDIS_URL"]).rpush(runs_key(group_id), json.dumps(run))
