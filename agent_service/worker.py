"""The Celery application `agentic_worker`: configuration, queues, routes, beat schedule, signal wiring.

Run it from the repository root with `celery -A worker worker --loglevel=info`. The task shells live in
`tasks.py`, which Celery imports when the worker starts (`include`); `process_agent_task` here is the
design's handle on the agent task, a signature by name: `process_agent_task.delay(task_id)`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Celery, current_app
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from agent_service.admission.base import Admission
from agent_service.config import LOCAL_DATA_DIR, Settings, get_settings
from agent_service.consumer.dispatch import FairDispatcher
from agent_service.consumer.readiness import DatabaseGate
from agent_service.errors import ConfigurationError
from agent_service.execution.maintenance import oldest_waiting_since
from agent_service.llm.runners import LLM_PROCESS_START_SECONDS, settle_heap
from agent_service.messaging.queues import queue_lengths
from agent_service.messaging.routing import (
    AGENT_QUEUE,
    HEALTH_TASK_NAME,
    PROCESS_TASK_NAME,
    SWEEP_TASK_NAME,
    TASK_QUEUES,
    TASK_ROUTES,
)
from agent_service.monitoring import configure_logging, start_metrics_exporter
from agent_service.services import Services


class AgentServiceCelery(Celery):
    """A Celery app that carries the services its tasks need (`services.Services`)."""

    def __init__(self, settings: Settings, *, admission: Admission | None = None) -> None:
        super().__init__(
            "agentic_worker",
            broker=settings.broker_url,
            backend=settings.result_backend,
            include=["agent_service.tasks"],
        )
        self.services = Services(settings, admission=admission)


def create_celery_app(settings: Settings, *, admission: Admission | None = None) -> AgentServiceCelery:
    """Build the configured app; its tasks are those of `tasks.py`."""
    app = AgentServiceCelery(settings, admission=admission)
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(DatabaseGate)
    app.steps["consumer"].add(FairDispatcher)
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours: JSON only, UTC, late acks, two routed queues, beat."""
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_track_started": True,
        "result_expires": settings.result_expires_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "worker_max_tasks_per_child": 1000,
        # A prefork child starts its LLM process before it says it is up (see llm.runners.ChildProcessRunner.start).
        "worker_proc_alive_timeout": LLM_PROCESS_START_SECONDS + 10,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": TASK_QUEUES,
        "task_default_queue": AGENT_QUEUE,
        "task_routes": TASK_ROUTES,
        "beat_schedule": {
            "health-check": {"task": HEALTH_TASK_NAME, "schedule": settings.health_check_interval_seconds},
            "sweep-stale-tasks": {"task": SWEEP_TASK_NAME, "schedule": settings.sweep_interval_seconds},
        },
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_seconds,
        # Task events cost a Redis message each; Flower switches them on in the workers when it starts (agent
        # tasks send theirs through consumer.batching, as Celery's own requests do).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(settings),
        "result_backend_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_seconds},
        "database_engine_options": {"connect_args": {"timeout": 30}},
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem"):
        folder = LOCAL_DATA_DIR / "broker"
        folder.mkdir(parents=True, exist_ok=True)
        # Every folder under .local: kombu's default control folder is ./control, wherever the worker runs.
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
    # Unacked messages come back after this long, even while still running, so it must outlast a task.
    return {"visibility_timeout": settings.broker_visibility_timeout_seconds}


try:
    app = create_celery_app(get_settings())
except ConfigurationError as exc:
    # `celery -A worker` prints a traceback for any exception raised while importing the app; a
    # configuration error is the user's to fix, and one line says it.
    raise SystemExit(f"configuration error: {exc}") from None
celery_app = app
process_agent_task = app.signature(PROCESS_TASK_NAME)


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure_logging(level=loglevel or "INFO", json_lines=app.services.settings.log_json)


@worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    if not _runs_this_app():
        return
    # A forked child must not reuse the parent's sockets; close=False leaves them to the parent.
    app.services.engine.dispose(close=False)
    _prepare_to_run_tasks()


@worker_ready.connect
def _start_metrics_and_llm_runner(**_: Any) -> None:
    if not _runs_this_app():
        return
    settings = app.services.settings
    start_metrics_exporter(
        settings.metrics_port,
        address=settings.metrics_address,
        queue_lengths=partial(queue_lengths, app),
        oldest_waiting_since=partial(oldest_waiting_since, app.services.session_factory),
    )
    if app.conf.worker_pool != "prefork":  # prefork: each pool process prepares itself
        _prepare_to_run_tasks()


@worker_process_shutdown.connect
def _stop_pool_process(**_: Any) -> None:
    if _runs_this_app():
        app.services.llm_runner.close()
        app.services.lease_keeper.stop()


@worker_shutdown.connect
def _stop_llm_runner(**_: Any) -> None:
    """After the pool has stopped: the LLM process answers any call still under way, then exits, before
    the worker does, and the lease ends (prefork: each pool process closes its own)."""
    if _runs_this_app() and app.conf.worker_pool != "prefork":
        app.services.llm_runner.close()
        app.services.lease_keeper.stop()


def _prepare_to_run_tasks() -> None:
    """In the process that runs the tasks, once started: take its liveness lease, settle its heap, start its LLM
    process and listen for cancellations."""
    app.services.lease_keeper.start()
    settle_heap()
    app.services.llm_runner.start()
    app.services.listen_for_cancellations()


def _runs_this_app() -> bool:
    """Worker signals are global and carry no app: a worker of another app that imports this module (the
    bench's floor does, for the configuration) must not get this app's worker set-up."""
    return current_app._get_current_object() is app
