"""The fair-share dispatcher each worker runs (DISPATCH_MODE=fair): a thread of the worker's main process
that runs dispatch rounds (`messaging.dispatch`) back to back while they publish, then every
DISPATCH_INTERVAL_SECONDS. Several workers' dispatchers take turns through a PostgreSQL advisory lock, so
any number of workers may run one, and a worker that dies mid-round leaves its tasks waiting.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from agent_service.messaging.dispatch import dispatch_waiting
from agent_service.messaging.routing import AGENT_QUEUE
from agent_service.services import services_of

logger = logging.getLogger("agent_service")


class FairDispatcher(bootsteps.StartStopStep):
    """Runs the dispatcher thread while the consumer runs, in a worker that consumes agent tasks; see the
    module docstring."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def include_if(self, c: Any) -> bool:
        return services_of(c.app).settings.fair_dispatch

    def start(self, c: Any) -> None:
        if self._thread is not None or AGENT_QUEUE not in c.app.amqp.queues.consume_from:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=run_dispatcher, args=(c.app, self._stopping), name="fair-dispatcher", daemon=True
        )
        self._thread.start()

    def stop(self, c: Any) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=10)
        self._thread = None

    shutdown = stop


def run_dispatcher(app: Celery, stopping: threading.Event) -> None:
    """Dispatch until `stopping` is set. A round that fails (database or broker down) is logged once per
    outage and tried again after the interval; its tasks stay waiting meanwhile."""
    services = services_of(app)
    settings = services.settings
    failing = False
    while not stopping.is_set():
        try:
            dispatch_waiting(app, services.session_factory, settings)
        except Exception as exc:  # any failure: the thread must outlive an outage of either service
            if not failing:
                logger.warning(
                    "fair-share dispatch failed, retrying every %.2f s: %s", settings.dispatch_interval_seconds, exc
                )
            failing = True
        else:
            if failing:
                logger.info("fair-share dispatch resumed")
            failing = False
        stopping.wait(settings.dispatch_interval_seconds)
