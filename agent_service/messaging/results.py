"""Celery results for agent-task messages: each message's outcome stored under its message id, so that
`AsyncResult(task_id).get()` answers although the messages run in batches (they are published with
`ignore_result`, which keeps Celery's own per-message bookkeeping out of the way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend


def store_results(app: Celery, results: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Store each `(message id, value)` as that message's successful result, expiring after `result_expires`:
    on Redis in one pipelined round trip (waiting clients are told through the key's channel, as Celery's own
    store does), on any other backend one `store_result` each.

    Raises: what the backend raises when it cannot be reached.
    """
    backend = app.backend
    if not results:
        return
    if not isinstance(backend, RedisBackend):
        for message_id, value in results:
            backend.store_result(message_id, value, states.SUCCESS)
        return
    backend.ensure(_store_pipelined, (backend, results))


def _store_pipelined(backend: RedisBackend, results: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """What `RedisBackend.set` does for one result (SET with its expiry, then PUBLISH), for all in one pipeline.
    Unlike `store_result` it does not read the key first: a repeated delivery stores the same final state."""
    with backend.client.pipeline(transaction=False) as pipe:
        for message_id, value in results:
            key = backend.get_key_for_task(message_id)
            meta = backend._get_result_meta(result=value, state=states.SUCCESS, traceback=None, request=None)
            encoded = backend.encode({**meta, "task_id": message_id})
            pipe.set(key, encoded, ex=backend.expires or None)
            pipe.publish(key, encoded)
        pipe.execute()
