"""The Celery application `agentic_worker`: configuration, queues, routes, beat schedule, signal wiring.

Run it from the repository root with `celery -A worker worker --loglevel=info`. The task shells live in
`tasks.py`, which Celery imports when the worker starts (`include`); `process_agent_task` here is the
design's handle on the agent task, a signature by name: `process_agent_task.delay(task_id)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from celery import Celery, current_app
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from agent_service.admission.base import Admission
from agent_service.admission.state import read_shared_state
from agent_service.config import LOCAL_DATA_DIR, Settings, get_settings
from agent_service.consumer.dead_letters import DeadLetterQueue
from agent_service.consumer.dispatch import FairDispatcher
from agent_service.consumer.preflight import tls_refusal
from agent_service.consumer.readiness import DatabaseGate
from agent_service.errors import ConfigurationError
from agent_service.execution.maintenance import read_backlog
from agent_service.llm.runners import LLM_PROCESS_START_SECONDS, raise_open_file_limit, settle_heap
from agent_service.messaging.queues import queue_lengths
from agent_service.messaging.redis_transport import use_for_redis_urls
from agent_service.messaging.routing import (
    AGENT_QUEUE,
    HEALTH_TASK_NAME,
    PROCESS_TASK_NAME,
    SWEEP_TASK_NAME,
    TASK_ROUTES,
    task_queues,
)
from agent_service.monitoring import WORKER_UP, Readings, configure_logging, start_metrics_exporter, use_metric_files
from agent_service.notifications import Event, EventType
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
    use_for_redis_urls()  # one redis-py client per broker channel (messaging.redis_transport)
    app = AgentServiceCelery(settings, admission=admission)
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(DatabaseGate)
    app.steps["consumer"].add(FairDispatcher)
    app.steps["consumer"].add(DeadLetterQueue)
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
        # A late-acked task running when the broker connection drops is terminated (its message comes back), where
        # the pool can terminate one: the threads and solo pools cannot, and Celery then stops the whole worker
        # ("does not implement kill_job"); there such a task runs on, and its message comes back all the same.
        "worker_cancel_long_running_tasks_on_connection_loss": settings.worker_pool == "prefork",
        # A channel error while the consumer (re)starts (a queue RabbitMQ has not recovered yet, just after the
        # broker came back) restarts the consumer, as a connection error does; Celery's default stops the worker.
        "broker_channel_error_retry": True,
        # After a reconnection Celery lowers the prefetch by the tasks still running and raises it back as they
        # end, through `basic.qos`, which on quorum queues (per-consumer QoS) binds only consumers made later:
        # the worker would stay at the lowered prefetch for good (celery/celery#9512, fixed after 5.6.3).
        "worker_enable_prefetch_count_reduction": not settings.broker_is_rabbitmq,
        "task_queues": task_queues(settings),
        "task_default_queue": AGENT_QUEUE,
        # RabbitMQ (quorum queues, see messaging.routing): prefetch per consumer, since quorum queues have no
        # global QoS, and countdowns through Celery's delay exchanges; both are Celery's defaults, stated here
        # because the retries and the prefetch depend on them.
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
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
        # On Redis, one result backend for all the pool's threads (a redis-py client is thread-safe): Celery makes
        # one per thread by default, each with a client and connections of its own, so a worker's memory grew with
        # every thread its pool started (docs/decisions.md#one-result-backend-for-a-workers-threads-2026-12-06).
        "result_backend_thread_safe": settings.result_backend_is_redis,
        "redis_max_connections": settings.redis_pool_size,
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


@worker_init.connect
def _stop_on_a_tls_failure(**_: Any) -> None:
    """Before the worker connects to anything: a connection that must be encrypted and cannot be stops it,
    with one line on standard error naming the setting (`consumer.preflight`), as a configuration error does."""
    if not _runs_this_app():
        return
    refusal = tls_refusal(app.services.settings, app.services.engine)
    if refusal:
        raise SystemExit(refusal)


@worker_init.connect
def _use_metric_files(**_: Any) -> None:
    """Before the pool and the LLM processes exist, so that each of them writes its metrics there too."""
    if _runs_this_app():
        use_metric_files(app.services.settings.metrics_files, clear=True)


@worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    if not _runs_this_app():
        return
    with _start_failures_notified():
        # A forked child must not reuse the parent's sockets; close=False leaves them to the parent.
        app.services.engine.dispose(close=False)
        _prepare_to_run_tasks()


@worker_ready.connect
def _start_metrics_and_llm_runner(sender: Any = None, **_: Any) -> None:
    if not _runs_this_app():
        return
    services = app.services
    readings = Readings(
        queue_lengths=partial(queue_lengths, app),
        backlog=partial(read_backlog, services.session_factory),
        shared_state=partial(read_shared_state, lambda: services.redis) if services.settings.redis_url else None,
    )
    settings = services.settings
    with _start_failures_notified():
        start_metrics_exporter(
            settings.metrics_port, address=settings.metrics_address, readings=readings, files=settings.metrics_files
        )
        if app.conf.worker_pool != "prefork":  # prefork: each pool process prepares itself
            _prepare_to_run_tasks()
    WORKER_UP.labels(_node_name(sender)).set(1)


@worker_process_shutdown.connect
def _stop_pool_process(**_: Any) -> None:
    if _runs_this_app():
        _stop_running_tasks()
        _send_notifications()


@worker_shutdown.connect
def _stop_llm_runner(sender: Any = None, **_: Any) -> None:
    """After the pool has stopped: the LLM process answers any call still under way, then exits, before
    the worker does, and the lease ends (prefork: each pool process closes its own); the notifications still
    queued are sent."""
    if not _runs_this_app():
        return
    WORKER_UP.labels(_node_name(sender)).set(0)
    if app.conf.worker_pool != "prefork":
        _stop_running_tasks()
    _send_notifications()


def _node_name(sender: Any) -> str:
    """The worker's Celery node name (`name@host`), as `celery inspect` and Flower show it."""
    return str(getattr(sender, "hostname", None) or "unknown")


def _prepare_to_run_tasks() -> None:
    """In the process that runs the tasks, once started: raise its open-file limit, take its liveness lease, trace
    its task runs (with tracing on), settle its heap, start its LLM process and listen for cancellations."""
    raise_open_file_limit(app.services.settings)
    app.services.lease_keeper.start()
    if app.services.tracing.enabled:
        from agent_service.tracing.instrumentation import instrument_celery  # only here: off loads no OpenTelemetry

        instrument_celery(app.services.tracing)
    settle_heap()
    if not app.services.llm_runner.start():
        _notify_start_failure(f"its LLM process was not ready within {LLM_PROCESS_START_SECONDS:.0f} s")
    app.services.listen_for_cancellations()


def _stop_running_tasks() -> None:
    """Undo `_prepare_to_run_tasks` in the process that ran the tasks: its LLM process answers the calls under
    way and exits, its tool connections close, its lease ends, and its spans are exported (a pool process exits
    without atexit hooks)."""
    app.services.llm_runner.close()
    app.services.tool_caller.close()
    app.services.lease_keeper.stop()
    app.services.tracing.shutdown()


@contextmanager
def _start_failures_notified() -> Iterator[None]:
    """Notify an error that keeps this worker process from getting ready, then let it go on as before."""
    try:
        yield
    except Exception as exc:
        _notify_start_failure(f"{type(exc).__name__}: {str(exc).strip().partition(chr(10))[0][:300]}")
        raise


def _notify_start_failure(reason: str) -> None:
    summary = f"a worker process (pid {os.getpid()}) cannot get ready to run tasks: {reason}"
    app.services.notifier.notify(Event(EventType.WORKER_START_FAILED, summary))


def _send_notifications() -> None:
    """Send what this process has queued before it exits, for at most one delivery's time."""
    app.services.notifier.close(timeout=app.services.settings.alert_webhook_timeout_seconds)


def _runs_this_app() -> bool:
    """Worker signals are global and carry no app: a worker of another app that imports this module (the
    bench's floor does, for the configuration) must not get this app's worker set-up."""
    return current_app._get_current_object() is app
