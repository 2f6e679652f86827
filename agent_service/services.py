"""The services a task needs, in one typed object: settings, database sessions, Redis, the LLM runner, the
tool caller, the admission checks, the replies kept in Redis, the live output publisher, the calls under
way, tracing, the notifier and the liveness lease. The Celery app carries one
(`worker.AgentServiceCelery.services`)."""

from __future__ import annotations

from functools import cached_property

import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent_service.admission import build_admission
from agent_service.admission.base import Admission
from agent_service.config import Settings
from agent_service.database import make_engine, make_lease_engine, make_session_factory
from agent_service.errors import ConfigurationError
from agent_service.execution.cancellation import RunningCalls
from agent_service.execution.context import OnGroupsEnded, OnSettled, RunContext
from agent_service.execution.liveness import LeaseKeeper
from agent_service.execution.replies import ReplyStore
from agent_service.execution.tool_calls import ToolCaller
from agent_service.live.publisher import LivePublisher
from agent_service.llm.prices import PriceBook
from agent_service.llm.runners import LLMRunner, make_runner
from agent_service.messaging.cancellation import CancelListener
from agent_service.notifications import Notifier, build_notifier
from agent_service.tracing import NO_TRACES, TaskTraces, Tracing, tracing_for


class Services:
    """Built once per process from settings; Redis, the admission checks and the LLM runner are made on
    first use, so after any fork."""

    def __init__(self, settings: Settings, *, admission: Admission | None = None) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings)
        self.session_factory: sessionmaker[Session] = make_session_factory(self.engine)
        if admission is not None:
            self.admission = admission

    @cached_property
    def redis(self) -> redis.Redis:
        """The Redis that shares state between workers (limits, leases, caps, breakers, replies).
        Raises: ConfigurationError when no REDIS_URL is set (the embedded set-up has no Redis)."""
        if not self.settings.redis_url:
            raise ConfigurationError("REDIS_URL is required for the admission controls that are switched on")
        return redis.Redis.from_url(self.settings.redis_url, max_connections=self.settings.redis_pool_size)

    @cached_property
    def prices(self) -> PriceBook:
        """Each model's prices, looked up once per process."""
        return PriceBook(self.settings)

    @cached_property
    def notifier(self) -> Notifier:
        """Where this process reports critical events (ALERT_WEBHOOK_URL; without it, nowhere)."""
        redis = (lambda: self.redis) if self.settings.redis_url else None
        return build_notifier(self.settings, redis=redis)

    @cached_property
    def admission(self) -> Admission:
        """The admission controls the settings switch on (none by default)."""
        return build_admission(
            self.settings,
            redis=lambda: self.redis,
            session_factory=self.session_factory,
            prices=self.prices,
            notifier=self.notifier,
        )

    @cached_property
    def tracing(self) -> Tracing:
        """This process's tracing (off unless an OTLP endpoint is set), built on first use, so after any fork."""
        return tracing_for(self.settings)

    @cached_property
    def llm_runner(self) -> LLMRunner:
        """Where this process's LLM requests run, all batches together."""
        return make_runner(self.settings, tracing=self.tracing)

    @cached_property
    def tool_caller(self) -> ToolCaller:
        """Where this process's agents' tool calls run, all batches together."""
        return ToolCaller(self.settings)

    @cached_property
    def replies(self) -> ReplyStore | None:
        """The replies kept until recorded (KEEP_REPLIES) and the agents' reply caches; None without Redis."""
        return ReplyStore.for_settings(self.settings, self.redis) if self.settings.redis_url else None

    @cached_property
    def live(self) -> LivePublisher | None:
        """Publishes the progress of the tasks someone follows (`live`); None without Redis."""
        return LivePublisher(self.redis, settings=self.settings) if self.settings.redis_url else None

    @cached_property
    def lease_keeper(self) -> LeaseKeeper:
        """This process's liveness lease, which it keeps while it runs tasks (made after any fork: the owner
        is this process)."""
        sessions = make_session_factory(make_lease_engine(self.settings))
        return LeaseKeeper(sessions, seconds=self.settings.worker_lease_seconds)

    @cached_property
    def running_calls(self) -> RunningCalls:
        """This process's LLM calls under way, by task, so that a cancelled task's call can be aborted."""
        return RunningCalls(self.llm_runner)

    def run_context(
        self,
        *,
        on_settled: OnSettled | None = None,
        on_groups_ended: OnGroupsEnded | None = None,
        traces: TaskTraces = NO_TRACES,
    ) -> RunContext:
        """What `execution.pipeline.execute_agent_tasks` runs a batch with: this process's services, and the
        batch's own hooks and its deliveries' traces."""
        return RunContext(
            settings=self.settings,
            session_factory=self.session_factory,
            llm=self.llm_runner,
            admission=self.admission,
            prices=self.prices,
            replies=self.replies,
            running=self.running_calls,
            live=self.live,
            tool_caller=self.tool_caller,
            on_settled=on_settled,
            on_groups_ended=on_groups_ended,
            traces=traces,
        )

    def listen_for_cancellations(self) -> None:
        """Abort the call of each task cancelled anywhere (announced through Redis) if this process runs it.
        Without Redis, a cancelled task's call runs to its end and its reply is discarded."""
        if self.settings.redis_url:
            CancelListener(self.redis, self.running_calls.abort).start()


def services_of(app: Celery) -> Services:
    """The services carried by an app that `worker.create_celery_app` built.
    Raises: TypeError for any other Celery app."""
    services = getattr(app, "services", None)
    if not isinstance(services, Services):
        raise TypeError(f"Celery app {app.main!r} carries no agent-service Services")
    return services
