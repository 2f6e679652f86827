"""The services a task needs, in one typed object: settings, database sessions, the LLM runner and the
admission checks. The Celery app carries one (`worker.AgentServiceCelery.services`)."""

from __future__ import annotations

from functools import cached_property

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from admission.base import Admission
from config import Settings
from database import make_engine, make_session_factory
from llm.runners import LLMRunner, make_runner


class Services:
    """Built once per process from settings; the LLM runner is made on first use, so after any fork."""

    def __init__(self, settings: Settings, *, admission: Admission | None = None) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings)
        self.session_factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.admission = admission or Admission()

    @cached_property
    def llm_runner(self) -> LLMRunner:
        """Where this process's LLM requests run, all batches together."""
        return make_runner(self.settings)


def services_of(app: Celery) -> Services:
    """The services carried by an app that `worker.create_celery_app` built.
    Raises: TypeError for any other Celery app."""
    services = getattr(app, "services", None)
    if not isinstance(services, Services):
        raise TypeError(f"Celery app {app.main!r} carries no agent-service Services")
    return services
