"""Storing agent-task results in each kind of result backend the service runs with: Redis (pipelined),
and the embedded SQLite database of the zero-configuration set-up (`make demo`)."""

from __future__ import annotations

import uuid

import pytest
from celery.result import AsyncResult

from agent_service.messaging.results import store_results
from agent_service.worker import create_celery_app


@pytest.fixture(params=["redis", "sqlite"])
def results_app(request, settings, tmp_path):
    backend = {"redis": settings.result_backend, "sqlite": f"db+sqlite:///{tmp_path / 'results.sqlite3'}"}
    return create_celery_app(settings.model_copy(update={"celery_result_backend": backend[request.param]}))


def test_stored_results_are_what_celery_clients_read(results_app):
    replies = {str(uuid.uuid4()): {"status": "completed", "result": f"answer {i}"} for i in range(3)}
    store_results(results_app, list(replies.items()))
    for message_id, value in replies.items():
        assert AsyncResult(message_id, app=results_app).get(timeout=5) == value
