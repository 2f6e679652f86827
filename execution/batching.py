"""The celery-batches adapter: agent-task messages are buffered and handed to the task as one batch.

Two behaviours of `celery_batches.Batches` are changed here, each for a bug it had under this service's
load (see docs/decisions.md, "Batches after a reconnection" and "A lost batch's messages").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from execution.services import services_of


class AgentTaskBatches(Batches):
    """Buffers agent-task messages and hands them over as one batch; the batch size and flush interval
    come from the app's settings. This task is always acks_late."""

    @property
    def flush_every(self) -> int:
        return services_of(self.app).settings.batch_max_size

    @property
    def flush_interval(self) -> float:
        return services_of(self.app).settings.batch_flush_seconds

    def Strategy(self, task: Any, app: Celery, consumer: Any) -> Callable:  # noqa: N802 (Celery's name)
        """Batches.Strategy, with the flush timer armed anew: Celery clears the event loop's timers on a
        broker reconnection, and a stale timer entry would flush only full batches from then on."""
        self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests: list) -> Any:
        """Batches.flush, plus: when the pool loses the batch (its prefork child died, or hit the hard time
        limit), its messages go back to the queue at once instead of holding their prefetch slots for good."""
        batch = ([SimpleRequest.from_request(request) for request in requests],)
        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=lambda _result: [request.acknowledge() for request in requests],
            error_callback=lambda _error: [request.reject(requeue=True) for request in requests],
        )
